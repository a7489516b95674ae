"""Language modelling on real text: the corpus, its split by file, recall hits, and a run's bits per byte."""

from __future__ import annotations

import math
import random

import pytest
from helpers import TINY_SWEEP, accuracy_records, speed_record

from runners import report
from runners.checks import ConfigError, instantiate_task
from runners.hydra_glue.configs import task_config
from runners.results import store
from runners.sweeping.run import run_sweep
from runners.training.run import run_training
from tasks import text
from tasks.text import FAR_HIT, NEAR_HIT, OTHER, Text, recall_kinds, split_of

TINY_TEXT = [
    "task=text",
    "model=tiny",
    "task.seq_len=32",
    "task.num_val=8",
    "task.num_test=16",
    "task.batch_size=8",
    "task.far=8",  # far hits: their last occurrence more than 8 bytes back, inside a 32-byte window
    "optim.max_steps=30",
    "optim.val_every=30",
    "optim.warmup_steps=2",
]


def write_corpus(folder, files: int = 80, size: int = 400, seed: int = 0):
    """A folder of small generated 'source files' with repeated identifiers (a corpus of the user's own); every
    file's functions carry its number, so no window of one file equals a window of another."""
    rng = random.Random(seed)
    names = [f"name_{i}" for i in range(30)]
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(files):
        lines = [
            f"def m{index}_{rng.choice(names)}({rng.choice(names)}):\n    return {rng.choice(names)}\n"
            for _ in range(20)
        ]
        (folder / f"module_{index}.py").write_text("".join(lines)[:size])
    return folder


def test_recall_kinds_mark_near_and_far_repeats_of_the_ngram():
    window = b"abcdXabcd" + b"." * 70 + b"abcd"
    kinds = recall_kinds(window, ngram=4, far=64)
    assert len(kinds) == len(window) - 1
    assert kinds[7] == NEAR_HIT  # predicts the second 'd': "abcd" ended 5 bytes before
    assert kinds[len(window) - 2] == FAR_HIT  # the last 'd': "abcd" last ended 74 bytes before
    assert kinds[4] == OTHER and kinds[2] == OTHER  # "abcdX" is new; no 4-gram is complete before byte 3
    assert kinds[20] == NEAR_HIT  # "...." repeats right away


def test_the_split_is_by_file_deterministic_and_never_mixes(tmp_path):
    paths = [f"pkg/module_{i}.py" for i in range(2000)]
    splits = [split_of(p) for p in paths]
    assert splits == [split_of(p) for p in paths]
    share = {name: splits.count(name) / len(splits) for name in ("train", "val", "test")}
    assert 0.03 < share["test"] < 0.07 and 0.03 < share["val"] < 0.07  # 1 in 20 each
    task = Text(corpus=str(write_corpus(tmp_path / "c")), seq_len=32, num_test=1000, num_val=1000)
    task.setup()
    by_split = {
        split: {bytes(row.tolist()) for row in task.dataset(split).tensors[0]} for split in ("train", "val", "test")
    }
    assert by_split["test"] and not by_split["test"] & by_split["train"]


def test_identity_names_the_corpus_and_changes_with_its_content(tmp_path):
    folder = write_corpus(tmp_path / "c")
    first = Text(corpus=str(folder), seq_len=32).identity()
    assert first["corpus_files"] == 80 and first["corpus_bytes"] == 80 * 400 and first["corpus"] == str(folder)
    (folder / "module_3.py").write_text("changed" * 60)
    text.load_corpus.cache_clear()
    assert Text(corpus=str(folder), seq_len=32).identity()["corpus_digest"] != first["corpus_digest"]


def test_the_standard_library_is_the_default_corpus_without_tests_or_installed_packages():
    corpus = text.load_corpus(None)
    assert len(corpus.files) > 300 and corpus.num_bytes > 5_000_000  # ~12 MB in ~700 files on Python 3.11
    assert not any("site-packages" in path or "/test/" in f"/{path}" for path in corpus.files)
    assert "os.py" in corpus.files


@pytest.mark.parametrize(
    ("corpus", "message"),
    [
        ("{tmp}/missing", r"task\.corpus=.*/missing: not a folder"),
        ("{tmp}/empty", r"task\.corpus=.*/empty: no readable, non-empty text files"),
        ("{tmp}/tiny", r"no (train|val|test)( or \w+)* file of at least seq_len \+ 1 = 33 bytes"),
    ],
)
def test_a_bad_corpus_is_one_line_naming_the_path_before_any_work(tmp_path, corpus, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "image.bin").write_bytes(b"\0\1\2")  # binary files are not text
    write_corpus(tmp_path / "tiny", files=3, size=20)
    config = task_config("text") | {"corpus": corpus.format(tmp=tmp_path), "seq_len": 32, "seed": 0}
    with pytest.raises(ConfigError, match=message):
        instantiate_task(config)


def test_a_run_reports_bits_per_byte_the_hit_split_and_the_gain(compose_config, tmp_path):
    folder = write_corpus(tmp_path / "c")
    result = run_training(compose_config("train", *TINY_TEXT, f"task.corpus={folder}"))
    assert result["status"] == "ok", result
    assert result["test_bpb"] == pytest.approx(result["test_loss"] / math.log(2), rel=1e-4)
    for key in ("test_bpb_far", "test_bpb_near", "test_bpb_other", "test_bpb_pos0", "test_bpb_pos7"):
        assert 0 < result[key] < 8.5, key  # about 8 bits for a model that knows nothing of 256 bytes
    assert result["in_context_gain_bits"] == pytest.approx(result["test_bpb_pos0"] - result["test_bpb_pos7"])
    assert 0 < result["unigram_entropy_bits"] < 8 and result["test_bytes"] == 16 * 32
    assert result["test_bpb"] < 8.0  # 30 steps learn the byte frequencies at least
    assert result["corpus_files"] == 80 and result["train_peak_memory_mib"] > 0
    shares = result["test_share_far"] + result["test_share_near"] + result["test_share_other"]
    assert shares == pytest.approx(1.0)


def test_a_non_causal_variant_is_unsupported_on_text(compose_config, tmp_path):
    folder = write_corpus(tmp_path / "c")
    result = run_training(compose_config("train", *TINY_TEXT, f"task.corpus={folder}", "attention=linformer"))
    assert result["status"] == "unsupported" and "cannot be causal" in result["message"]


def test_a_sweep_scores_text_and_the_report_ranks_by_bits_per_byte(compose_config, tmp_path, capsys):
    folder = write_corpus(tmp_path / "c")
    entry = (
        f"+sweep.accuracy={{text:{{seq_lens:[32],corpus:'{folder}',far:8,num_val:8,num_test:16,batch_size:8,"
        "optim:{max_steps:30,val_every:30,warmup_steps:2}}}"
    )
    overrides = [o for o in TINY_SWEEP if not o.startswith(("+sweep.accuracy", "sweep.seq_lens"))]
    cfg = compose_config("config", *overrides, entry, "sweep.variants=[full,linear,nystrom]", "sweep.seq_lens=[32]")
    cfg.sweep.causal = True
    run_sweep(cfg)
    assert "bits/byte (far hits" in capsys.readouterr().err  # the console line of a text run
    records = [r for r in store.read_records(tmp_path / "store") if r["probe"] == "accuracy"]
    by_variant = {r["variant"]: r for r in records}
    assert by_variant["nystrom"]["status"] == "unsupported"  # cannot be causal
    assert by_variant["full"]["config"]["data"]["corpus_files"] == 80
    assert by_variant["full"]["test_bpb"] > 0 and by_variant["linear"]["test_bpb"] > 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "### Language modelling on real text" in report and "text_positions_32" in report
    assert "not informative" in report  # 30 steps of a tiny model do not beat the unigram baseline by a bit
    best = min(("full", "linear"), key=lambda name: by_variant[name]["test_bpb"])
    choice = report.split("## Which attention for you")[1].split("\n## ")[0]
    assert f"- Accuracy first: `{best}`" in choice and "bpb " in choice

    # the same entry over another corpus is another point, never a resumed one
    other = write_corpus(tmp_path / "other", seed=1)
    cfg = compose_config(
        "config", *overrides, entry.replace(str(folder), str(other)), "sweep.variants=[full]", "sweep.seq_lens=[]"
    )
    run_sweep(cfg)
    records = store.read_records(tmp_path / "store")
    assert len({r["config"]["data"]["corpus_digest"] for r in records if "data" in r["config"]}) == 2


def test_the_choice_links_point_at_the_sections_that_exist(tmp_path):
    """Text trained on one machine (no speed section there), speed on another: links name the first sections."""
    speeds = (("full", 1e4), ("linear", 2e4))
    records = [speed_record(name, 256, tok, 10.0, fp="cpu-B", causal=True) for name, tok in speeds]
    for name, bpbs in (("full", (2.0, 2.1)), ("linear", (2.5, 2.6))):
        for run in accuracy_records(name, bpbs, n=256, direction="causal", fp="cpu-A"):
            run |= {"task": "text", "test_bpb": run["test_acc"], "unigram_entropy_bits": 4.6, "steps": 100}
            records.append(run)
    for i, record in enumerate(records):
        store.write_point(tmp_path / "store", record | {"key": f"k{i}"})
    text = report.main(["--results", str(tmp_path / "store"), "--out", str(tmp_path / "out")]).read_text()
    assert "[speed](#speed-and-memory)" in text and "#speed-and-memory-1" not in text
    assert "[bits per byte](#language-modelling-on-real-text)" in text
