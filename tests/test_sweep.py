"""The sweep end to end on tiny sizes: store, resume, failures as results, wandb offline."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from runners import store, sweep
from runners.config import CONF_DIR
from runners.memory import timing_env

TINY = [
    "model=tiny",
    "task.vocab_size=32",
    "task.num_pairs=4",
    "task.num_queries=4",
    "task.num_train=256",
    "task.num_val=32",
    "task.num_test=32",
    "task.batch_size=32",
    "optim.max_steps=20",
    "optim.val_every=10",
    "optim.warmup_steps=2",
    "sweep.seq_lens=[32,64]",
    "sweep.accuracy_seq_lens=[32]",
    "sweep.repeats=2",
    "sweep.warmup=1",
    "sweep.batch_size=2",
]


def config(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(
            "config",
            overrides=[
                *TINY,
                f"results_dir={tmp_path / 'store'}",
                f"report_dir={tmp_path / 'report'}",
                "logger=none",
                *overrides,
            ],
        )


def point_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "store" / "points").glob("*.json"))


def test_tiny_sweep_writes_one_record_per_point(tmp_path):
    table = sweep.run_sweep(config(tmp_path, "attention=full"))
    records = store.read_records(tmp_path / "store")
    assert len(records) == len(point_files(tmp_path)) == 3  # 2 speed + 1 accuracy
    assert all(r["status"] == "ok" for r in records), [r.get("message") for r in records]
    speed = [r for r in records if r["probe"] == "speed"]
    for r in speed:
        assert r["train_tokens_per_s"] > 0 and r["infer_tokens_per_s"] > 0
        assert r["peak_memory_mib"] > 0 and r["flops_per_step"] > 0 and r["params"] > 0
        assert r["peak_memory_mib"] == pytest.approx(r["state_memory_mib"] + r["step_memory_mib"])
        assert r["state_memory_mib"] >= 4 * r["params"] * 4 / 2**20  # weights, gradients, two AdamW moments
        assert r["train_tokens_per_s_min"] <= r["train_tokens_per_s"] <= r["train_tokens_per_s_max"]
    accuracy = next(r for r in records if r["probe"] == "accuracy")
    assert 0 <= accuracy["test_acc"] <= 1 and accuracy["task"] == "MQAR"
    context = records[0]
    assert context["versions"]["torch"] == torch.__version__.split("+")[0] or context["versions"]["torch"]
    assert context["hardware_info"]["cpu_count"] >= 1 and "fingerprint" in context["hardware_info"]
    assert context["resolved_config"]["attention"]["name"] == "full" and context["date"]
    assert (tmp_path / "store" / "results_table.csv").exists()
    assert "full" in (tmp_path / "report" / "report.md").read_text()
    assert len(table) == 3


def test_resume_skips_done_points_and_force_remeasures(tmp_path):
    cfg = config(tmp_path, "attention=full", "sweep.accuracy_seq_lens=[]")
    sweep.run_sweep(cfg)
    first = {p.name: p.read_text() for p in point_files(tmp_path)}
    sweep.run_sweep(cfg)
    assert {p.name: p.read_text() for p in point_files(tmp_path)} == first, "nothing re-measured"
    sweep.run_sweep(config(tmp_path, "attention=full", "sweep.accuracy_seq_lens=[]", "force=true"))
    again = {p.name: p.read_text() for p in point_files(tmp_path)}
    assert again.keys() == first.keys() and again != first
    bigger = config(tmp_path, "attention=full", "sweep.accuracy_seq_lens=[]", "sweep.seq_lens=[32,64,96]")
    sweep.run_sweep(bigger)
    assert len(point_files(tmp_path)) == 3, "only the new length was added"


def test_an_injected_failure_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    real_probe = sweep.measure_speed

    def flaky(**kwargs):
        if kwargs["seq_len"] == 32:
            raise RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory")
        return real_probe(**kwargs)

    monkeypatch.setattr(sweep, "measure_speed", flaky)
    sweep.run_sweep(config(tmp_path, "attention=local", "sweep.accuracy_seq_lens=[]"))
    by_len = {r["seq_len"]: r for r in store.read_records(tmp_path / "store")}
    assert by_len[32]["status"] == "oom" and "can't allocate" in by_len[32]["message"]
    assert by_len[64]["status"] == "ok"


def test_unsupported_combinations_are_results(tmp_path):
    sweep.run_sweep(config(tmp_path, "attention=linformer", "attention.k=16", "sweep.seq_lens=[]"))
    (record,) = store.read_records(tmp_path / "store")
    assert record["status"] == "unsupported" and "cannot be causal" in record["message"]
    if not torch.cuda.is_available():
        sweep.run_sweep(config(tmp_path, "attention=full", "hardware=cuda", "sweep.accuracy_seq_lens=[]"))
        cuda = [r for r in store.read_records(tmp_path / "store") if r["hardware"] == "cuda"]
        assert len(cuda) == 2 and all(r["status"] == "unsupported" for r in cuda)


def test_bidirectional_mqar_scores_a_variant_that_cannot_be_causal(tmp_path):
    cfg = config(tmp_path, "attention=linformer", "attention.k=16", "sweep.seq_lens=[]", "task.causal=false")
    sweep.run_sweep(cfg)
    (record,) = store.read_records(tmp_path / "store")
    assert record["status"] == "ok" and record["config"]["task"]["causal"] is False


def test_corrupted_result_file_is_skipped_with_a_warning(tmp_path):
    sweep.run_sweep(config(tmp_path, "attention=full", "sweep.accuracy_seq_lens=[]"))
    (tmp_path / "store" / "points" / "broken--x.json").write_text('{"key": "abc", "status": ')
    with pytest.warns(UserWarning, match="skipping unreadable result file"):
        records = store.read_records(tmp_path / "store")
    assert len(records) == 2


def test_bad_config_stops_before_any_work(tmp_path):
    with pytest.raises(sweep.ConfigError, match="window=0 is out of range"):
        sweep.run_sweep(config(tmp_path, "attention=local", "attention.window=0"))
    with pytest.raises(sweep.ConfigError, match="unknown hyperparameter"):
        sweep.run_sweep(config(tmp_path, "attention=local", "+attention.windw=3"))
    assert not (tmp_path / "store").exists()


def test_wandb_offline_writes_run_files(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = config(tmp_path, "attention=full", "sweep.accuracy_seq_lens=[]", "sweep.seq_lens=[32]", "logger=wandb")
    cfg.wandb.dir = str(tmp_path)
    sweep.run_sweep(cfg)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))


def test_atomic_writes_from_two_writers_do_not_clobber(tmp_path):
    record = {"key": "k1", "status": "ok"}
    first = store.write_point(tmp_path, record)
    second = first.with_name("k1--otherhost-1.json")
    second.write_text(json.dumps(record | {"status": "oom"}))
    assert len(store.read_records(tmp_path)) == 2
    assert not list((tmp_path / "points").glob(".*.tmp"))


PLAIN_LOOP = """
import json, statistics, sys, time
import torch
from runners.probe import build_model

seq, batch, model_cfg, threads = json.loads(sys.argv[1])
torch.set_num_threads(threads)
torch.manual_seed(0)
model = build_model(model_cfg=model_cfg, attention={"name": "full_math"}, vocab_size=128, seq_len=seq, causal=False)
model.eval()
tokens = torch.randint(0, 128, (batch, seq))
times = []
with torch.inference_mode():
    for i in range(25):
        start = time.perf_counter()
        model(tokens)
        if i >= 5:
            times.append(time.perf_counter() - start)
print(batch * seq / statistics.median(times))
"""


def test_recorded_inference_throughput_matches_a_plain_timing_loop(tmp_path):
    """Measurement honesty: full_math at seq 1024, the sweep's number vs a loop written here.

    The loop runs in a fresh interpreter with the same malloc settings as the
    sweep's probe (``timing_env``): glibc's adaptive thresholds otherwise put a
    process in a fast or a slow regime, 2x apart, for this allocation-heavy model.
    """
    seq, batch = 1024, 2
    cfg = config(
        tmp_path,
        "attention=full_math",
        "model=small",  # compute-bound: a tiny model's timing swings with malloc between processes
        f"sweep.seq_lens=[{seq}]",
        "sweep.accuracy_seq_lens=[]",
        f"sweep.batch_size={batch}",
        "sweep.repeats=20",
        "sweep.warmup=5",
    )
    cfg.force = True
    for _attempt in range(3):  # this machine is shared: a paired re-measurement, never a wider tolerance
        sweep.run_sweep(cfg)
        recorded = max(store.read_records(tmp_path / "store"), key=lambda r: r["finished_at"])["infer_tokens_per_s"]
        spec = json.dumps([seq, batch, dict(cfg.model), cfg.hardware.threads])
        command = [sys.executable, "-c", PLAIN_LOOP, spec]
        runs = [subprocess.run(command, capture_output=True, text=True, check=True, env=timing_env()) for _ in range(3)]
        plain = statistics.median(float(done.stdout.strip().splitlines()[-1]) for done in runs)  # 3 processes
        if recorded == pytest.approx(plain, rel=0.15):
            break
    assert recorded == pytest.approx(plain, rel=0.15)


def test_isolated_probe_reports_failures_with_their_status():
    from runners.failures import PointFailed
    from runners.probe import isolated_speed_probe

    common = {"model_cfg": {"dim": 32, "layers": 1, "heads": 2}, "batch_size": 1, "causal": False}
    common |= {"device": torch.device("cpu"), "threads": 1, "warmup": 0, "repeats": 1}
    with pytest.raises(PointFailed) as failed:
        isolated_speed_probe(attention={"name": "linformer", "k": 64}, seq_len=32, **common)
    assert failed.value.status == "unsupported" and "k=64" in str(failed.value)
    with pytest.raises(PointFailed) as failed:
        isolated_speed_probe(attention={"name": "full"}, seq_len=32, timeout_s=0.01, **common)
    assert failed.value.status == "timeout"
    result = isolated_speed_probe(attention={"name": "full"}, seq_len=32, **common)
    assert result["train_tokens_per_s"] > 0


def test_flop_count_of_full_includes_its_fused_attention():
    from runners.config import default_attention
    from runners.probe import speed_probe

    model = {"dim": 32, "layers": 1, "heads": 2, "dim_head": None, "ff_mult": 2}
    flops = {
        name: speed_probe(
            model_cfg=model,
            attention=default_attention(name),
            seq_len=64,
            batch_size=2,
            causal=False,
            device=torch.device("cpu"),
            warmup=0,
            repeats=1,
        )["flops_per_step"]
        for name in ("full", "full_math")
    }
    assert flops["full"] == flops["full_math"] > 0
