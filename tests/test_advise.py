"""runners.advise on synthetic stores: constraints, evidence, a missing length or hardware, bad arguments."""

from __future__ import annotations

import functools
import re
import shlex
from pathlib import Path

import pytest
from helpers import accuracy_records, speed_record

from runners import advise
from runners.reporting.tables import flat_results
from runners.results import store

speed = speed_record
accuracy = functools.partial(accuracy_records, n=512)


LENGTHS = (512, 2048)
RECORDS = (
    [speed("full", n, 1e7 / n, 1e-3 * n * n) for n in LENGTHS]  # time per token ~ n, memory ~ n^2
    + [speed("linear", n, 2e4, 0.5 * n) for n in LENGTHS]  # constant tok/s, memory ~ n
    + [speed("local", n, 3e4, 0.4 * n) for n in LENGTHS]
    + [speed("performer", 512, 0, 0, status="oom"), speed("performer", 2048, 0, 0, status="oom")]
    + accuracy("full", (0.99, 1.0))
    + accuracy("linear", (0.95, 0.97))
    + accuracy("local", (0.40, 0.50))
    + [speed("full", 512, 9e4, 5.0, fp="gpu-B"), speed("full", 2048, 8e4, 20.0, fp="gpu-B")]
)


@pytest.fixture
def results(tmp_path):
    for i, record in enumerate(RECORDS):
        store.write_point(tmp_path / "store", record | {"key": f"k{i}"})
    return tmp_path / "store"


def run(capsys, *args):
    answers = advise.main([str(a) for a in args])
    return answers, capsys.readouterr().out


def test_constraints_rank_and_rule_out_with_reasons(results, capsys):
    answers, out = run(capsys, "--results", results, "--seq-len", 512, "--min-accuracy", 0.9, "--hardware", "cpu-A")
    assert list(answers) == ["cpu-A"]
    assert list(answers["cpu-A"].index) == ["linear", "full"]  # by speed: 20,000 tok/s before 19,531
    assert "local: accuracy 0.450 < 0.9" in out
    assert "performer: speed point oom at n=512" in out
    assert "1. linear" in out and "0.960 (0.950-0.970, 2 seeds)" in out


def test_speed_between_and_beyond_measured_lengths_is_interpolated_or_extrapolated_and_labelled(results, capsys):
    answers, _ = run(capsys, "--results", results, "--seq-len", 1024, "--hardware", "cpu-A", "--first", "memory")
    best = answers["cpu-A"]
    assert best.loc["full", "peak_memory_mib"] == pytest.approx(1e-3 * 1024**2)  # exact for a power law
    assert best.loc["full", "train_tokens_per_s"] == pytest.approx(1e7 / 1024)
    assert best.loc["full", "speed_evidence"] == "interpolated between 512 and 2,048"
    assert list(best.index) == ["local", "linear", "full"]  # leanest first
    answers, _ = run(capsys, "--results", results, "--seq-len", 8192, "--hardware", "cpu-A")
    assert answers["cpu-A"].loc["full", "peak_memory_mib"] == pytest.approx(1e-3 * 8192**2)
    evidence = answers["cpu-A"].loc["full", "speed_evidence"]
    assert evidence == "tok/s extrapolated from 512-2,048 (~ n^-1.00), MiB extrapolated from 512-2,048 (~ n^2.00)"


def test_accuracy_is_not_borrowed_from_another_length_unless_asked(results, capsys):
    answers, out = run(capsys, "--results", results, "--seq-len", 2048, "--min-accuracy", 0.9, "--hardware", "cpu-A")
    assert answers["cpu-A"].empty
    assert "No variant meets every constraint" in out and "no accuracy at n=2,048" in out and "n=512" in out
    answers, out = run(
        capsys, "--results", results, "--seq-len", 2048, "--min-accuracy", 0.9, "--accuracy-seq-len", 512,
        "--hardware", "cpu-A", "--first", "accuracy",
    )  # fmt: skip
    assert list(answers["cpu-A"].index) == ["full", "linear"]  # local's 0.45 at n=512 rules it out
    assert "measured at n=512, asked by --accuracy-seq-len" in out


def test_accuracy_first_puts_seed_spread_ties_first_fastest_among_them(results, capsys):
    answers, out = run(capsys, "--results", results, "--seq-len", 512, "--first", "accuracy", "--hardware", "cpu-A")
    assert list(answers["cpu-A"].index) == ["full", "linear", "local"]  # no tie: full's 0.99 > linear's 0.97
    assert "Tied on accuracy" not in out


def test_every_hardware_answers_from_its_own_points_and_a_committed_csv_works(results, tmp_path, capsys):
    flat_results(store.read_records(results)).to_csv(tmp_path / "results.csv", index=False)
    answers, out = run(capsys, "--results", tmp_path / "results.csv", "--seq-len", 512)
    assert set(answers) == {"cpu-A", "gpu-B"}
    assert list(answers["gpu-B"].index) == ["full"] and "on gpu-B" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seq-len", "512", "--first", "fast"], "invalid choice: 'fast' (choose from 'accuracy', 'memory', 'speed')"),
        (["--seq-len", "0"], "--seq-len and --accuracy-seq-len must be positive integers"),
        (["--seq-len", "512", "--min-accuracy", "90"], "--min-accuracy is a fraction between 0 and 1"),
        (
            ["--seq-len", "512", "--hardware", "tpu"],
            "no hardware matches --hardware 'tpu'; in the results: cpu-A; gpu-B",
        ),
        (["--seq-len", "512", "--task", "mqar"], "--task 'mqar' was not scored; in the results: lookup"),
    ],
)
def test_bad_arguments_get_one_line_naming_the_valid_choices(results, capsys, args, message):
    with pytest.raises(SystemExit) as stopped:
        advise.main(["--results", str(results), *args])
    text = str(stopped.value.code) if isinstance(stopped.value.code, str) else capsys.readouterr().err
    assert message in text and len(text.strip().splitlines()) == 1


def test_the_readme_command_answers_from_the_committed_example_report(capsys):
    repo = Path(__file__).resolve().parents[1]
    line = next(x for x in (repo / "README.md").read_text().splitlines() if x.startswith("python -m runners.advise"))
    args = shlex.split(re.sub(r"^python -m runners\.advise", "", line).split("#")[0])
    folder = repo / args[args.index("--results") + 1]
    assert (folder / "results.csv").is_file(), f"the README's example folder {folder} is not committed"
    answers = advise.main([a if a != str(folder.relative_to(repo)) else str(folder) for a in args])
    out = capsys.readouterr().out
    assert answers and "variants meet every constraint" in out  # the committed example satisfies it


def test_text_is_ranked_by_bits_per_byte_lowest_first_and_bounded_by_max_bpb(tmp_path, capsys):
    """Language modelling is scored in bits per byte: lower is better, ties by overlapping seed spreads."""
    records = [
        speed(name, 256, tok, 10.0, causal=True) for name, tok in (("full", 1e4), ("linear", 3e4), ("local", 2e4))
    ]
    for name, bpbs in (("full", (2.00, 2.02)), ("linear", (2.60, 2.64)), ("local", (2.01, 2.05))):
        for seed_run in accuracy_records(name, bpbs, n=256, direction="causal"):
            records.append(seed_run | {"task": "text", "test_bpb": seed_run["test_acc"], "test_acc": 0.5})
    for i, record in enumerate(records):
        store.write_point(tmp_path / "store", record | {"key": f"k{i}"})
    base = ["--results", tmp_path / "store", "--seq-len", 256, "--causal", "--task", "text"]
    answers, out = run(capsys, *base, "--first", "accuracy")
    assert list(answers["cpu-A"].index) == ["local", "full", "linear"]  # full and local tie; local is faster
    assert "2.010 bpb (2.000-2.020, 2 seeds)" in out and "Tied on accuracy within the seed spread: local, full" in out
    answers, out = run(capsys, *base, "--max-bpb", 2.5)
    assert list(answers["cpu-A"].index) == ["local", "full"] and "linear: bits per byte 2.620 > 2.5" in out
    _, out = run(capsys, *base, "--min-accuracy", 0.9)
    assert "this task is scored in bits per byte: use --max-bpb" in out
