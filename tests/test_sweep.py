"""The sweep end to end on tiny sizes: store, resume, failures as results, wandb offline, a clean console."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest
import torch
from helpers import TINY_SWEEP
from omegaconf import OmegaConf

import variants
from runners.hydra_glue.configs import attention_config
from runners.measure.failures import PointFailed
from runners.measure.speed_probe import speed_probe
from runners.measure.worker import measure_isolated, run_isolated
from runners.results import store
from runners.sweeping import rounds
from runners.sweeping.execute import SPEED_PROBE
from runners.sweeping.plan import ConfigError
from runners.sweeping.run import run_sweep

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def sweep_config(compose_config):
    """The sweep's config at test size, with more overrides."""
    return lambda *overrides: compose_config("config", *TINY_SWEEP, *overrides)


def point_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "store" / "points").glob("*.json"))


def test_tiny_sweep_writes_one_record_per_point_and_offline_wandb_runs(tmp_path, sweep_config):
    table = run_sweep(sweep_config("attention=full", "logger=wandb"))
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
    assert 0 <= accuracy["test_acc"] <= 1 and accuracy["task"] == "mqar"
    assert accuracy["direction"] == "causal" and accuracy["seed"] == 0 and accuracy["lr"] == 3e-3
    assert [p["step"] for p in accuracy["learning_curve"]] == [10, 20] and accuracy["params"] > 0
    context = records[0]
    assert context["versions"]["torch"] == metadata.version("torch")
    assert context["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert context["hardware_info"]["cpu_count"] >= 1 and "fingerprint" in context["hardware_info"]
    assert context["hardware_info"]["matmul_gflops"]["fp32"] > 0
    assert context["resolved_config"]["attention"]["name"] == "full" and context["date"]
    assert (tmp_path / "store" / "results_table.csv").exists()
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## " in report and "% of this machine's measured matmul peak" in report
    assert len(table) == 3
    runs = list((tmp_path / "wandb").glob("offline-run-*"))  # one offline wandb run per point, no account
    assert len(runs) == 3 and all(any(run.rglob("*.wandb")) for run in runs)


def test_accuracy_runs_side_by_side_give_the_same_accuracy_as_one_at_a_time(tmp_path, sweep_config):
    """sweep.accuracy_jobs=2: two runs in workers, one thread each; a run's result is what it would be alone."""
    side = sweep_config("attention=full", "sweep.seq_lens=[]", "sweep.seeds=[0,1]", "sweep.accuracy_jobs=2")
    side.hardware.threads = 2
    run_sweep(side)
    together = {r["seed"]: r for r in store.read_records(tmp_path / "store") if r["probe"] == "accuracy"}
    assert sorted(together) == [0, 1] and all(r["status"] == "ok" for r in together.values()), together
    assert {(r["config"]["hardware"]["threads"], r["concurrent_runs"]) for r in together.values()} == {(1, 2)}
    alone = sweep_config("attention=full", "sweep.seq_lens=[]", "sweep.seeds=[0]", "sweep.accuracy_jobs=1")
    alone.hardware.threads, alone.results_dir = 1, str(tmp_path / "alone")
    run_sweep(alone)
    [single] = [r for r in store.read_records(tmp_path / "alone") if r["probe"] == "accuracy"]
    assert single["key"] == together[0]["key"] and single["concurrent_runs"] == 1  # the same point
    assert single["test_acc"] == together[0]["test_acc"]
    assert [p["val_loss"] for p in single["learning_curve"]] == [p["val_loss"] for p in together[0]["learning_curve"]]


def test_resume_skips_done_points_and_force_remeasures(tmp_path, sweep_config):
    cfg = sweep_config("attention=full", "sweep.accuracy=null", "sweep.seq_lens=[32]")
    run_sweep(cfg)
    first = {p.name: p.read_text() for p in point_files(tmp_path)}
    run_sweep(cfg)
    assert {p.name: p.read_text() for p in point_files(tmp_path)} == first, "nothing re-measured"
    run_sweep(sweep_config("attention=full", "sweep.accuracy=null", "sweep.seq_lens=[32]", "force=true"))
    again = {p.name: p.read_text() for p in point_files(tmp_path)}
    assert again.keys() == first.keys() and again != first
    run_sweep(sweep_config("attention=full", "sweep.accuracy=null", "sweep.seq_lens=[32,48]"))
    assert len(point_files(tmp_path)) == 2, "only the new length was added"


def test_an_interrupted_timing_phase_keeps_partial_points_and_a_resume_times_them_again(
    tmp_path, sweep_config, monkeypatch
):
    real, calls = rounds.run_part, []

    def interrupted(call, parts, malloc, **pairing):
        calls.append(parts)
        if len(calls) == 7:  # memory of both points, two rounds of both, then the third round's first process
            raise KeyboardInterrupt
        return real(call, parts, malloc, **pairing)

    overrides = (
        "attention=local",
        "sweep.accuracy=null",
        "sweep.seq_lens=[32]",
        "sweep.timing={rounds:3,max_rounds:3}",
        "sweep.baselines=[full]",
    )
    monkeypatch.setattr(rounds, "run_part", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep_config(*overrides))
    partial = store.read_records(tmp_path / "store")
    assert sorted(r["variant"] for r in partial) == ["full", "local"]
    assert all(r["partial_rounds"] and r["rounds"] == 2 and r["train_tokens_per_s_ratio"] for r in partial)
    monkeypatch.setattr(rounds, "run_part", real)
    run_sweep(sweep_config(*overrides))  # the partial points are not "in the store": timed again, in full
    final = store.read_records(tmp_path / "store")
    assert len(final) == 2 and all(not r["partial_rounds"] and r["rounds"] >= 3 for r in final), final


def test_an_injected_failure_is_recorded_and_the_sweep_goes_on(tmp_path, sweep_config, monkeypatch):
    real = rounds.run_part

    def flaky(call, parts, malloc, **pairing):
        if call.kwargs["seq_len"] == 32:
            raise RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory")
        return real(call, parts, malloc, **pairing)

    monkeypatch.setattr(rounds, "run_part", flaky)
    run_sweep(sweep_config("attention=local", "sweep.accuracy=null"))
    by_len = {r["seq_len"]: r for r in store.read_records(tmp_path / "store")}
    assert by_len[32]["status"] == "oom" and "can't allocate" in by_len[32]["message"]
    assert by_len[64]["status"] == "ok"


def test_unsupported_combinations_are_results(tmp_path, sweep_config):
    run_sweep(sweep_config("attention=linformer", "attention.k=16", "sweep.seq_lens=[]"))
    (record,) = store.read_records(tmp_path / "store")
    assert record["status"] == "unsupported" and "cannot be causal" in record["message"]
    if not torch.cuda.is_available():
        run_sweep(sweep_config("attention=full", "hardware=cuda", "sweep.accuracy=null"))
        cuda = [r for r in store.read_records(tmp_path / "store") if r["hardware"] == "cuda"]
        assert len(cuda) == 2 and all(r["status"] == "unsupported" for r in cuda)
        assert "no CUDA device" in cuda[0]["message"]


def test_bidirectional_mqar_scores_a_variant_that_cannot_be_causal(tmp_path, sweep_config):
    run_sweep(sweep_config("attention=linformer", "attention.k=16", "sweep.seq_lens=[]"))  # TINY: causal only
    run_sweep(
        sweep_config("attention=linformer", "attention.k=16", "sweep.seq_lens=[]", "~sweep.accuracy.mqar.directions")
    )
    records = {r["direction"]: r for r in store.read_records(tmp_path / "store")}
    assert records["causal"]["status"] == "unsupported"
    assert records["bidirectional"]["status"] == "ok" and records["bidirectional"]["config"]["task"]["causal"] is False


def test_corrupted_result_file_is_skipped_with_a_warning(tmp_path):
    store.write_point(tmp_path, {"key": "good", "status": "ok"})
    (tmp_path / "points" / "broken--x.json").write_text('{"key": "abc", "status": ')
    with pytest.warns(UserWarning, match="skipping unreadable result file"):
        records = store.read_records(tmp_path)
    assert [r["key"] for r in records] == ["good"]


def test_bad_config_stops_before_any_work(tmp_path, sweep_config):
    with pytest.raises(ConfigError, match="window=0 is out of range"):
        run_sweep(sweep_config("attention=local", "attention.window=0"))
    with pytest.raises(ConfigError, match="unknown hyperparameter"):
        run_sweep(sweep_config("attention=local", "+attention.windw=3"))
    with pytest.raises(ConfigError, match="cannot apply attention dropout"):
        run_sweep(sweep_config("attention=performer", "model.attn_dropout=0.1"))
    assert not (tmp_path / "store").exists()


WRITER = """
import sys, time
from pathlib import Path
from runners.results import store

folder, name, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
while not (folder / "go").exists():  # both writers start together
    time.sleep(0.001)
for i in range(count):
    store.write_point(folder, {"key": f"{name}-{i}", "writer": name, "payload": "x" * 20_000})
    store.write_point(folder, {"key": f"shared-{i}", "writer": name})  # the same point from both
"""


def test_two_processes_writing_into_one_store_at_once_lose_nothing(tmp_path):
    count = 100
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), name, str(count)]) for name in ("a", "b")]
    (tmp_path / "go").touch()
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    records = store.read_records(tmp_path)
    assert len(records) == 4 * count  # own points of both, and the shared points once per writer
    for name in ("a", "b"):
        own = {r["key"] for r in records if r["writer"] == name and not r["key"].startswith("shared")}
        assert own == {f"{name}-{i}" for i in range(count)}
        assert all(len(r["payload"]) == 20_000 for r in records if r["writer"] == name and "payload" in r)
    shared = [r["key"] for r in records if r["key"].startswith("shared")]
    assert sorted(shared) == sorted([f"shared-{i}" for i in range(count)] * 2)
    assert not list((tmp_path / "points").glob(".*.tmp"))


SLEEP_S = 0.05  # per attention call: the rest of the tiny model's training step is ~8 ms (Zen 4), its forward ~3 ms


@pytest.fixture
def sleeping_variant():
    """A variant whose every call takes a known time, so a throughput's true value is known without a clock race."""

    @variants.register("sleep_then_values")
    class SleepThenValues(variants.Attention):
        supports_causal = False

        def attend(self, q, k, v, mask):
            time.sleep(SLEEP_S)
            return v + 0 * q

    yield
    variants.unregister("sleep_then_values")


def test_the_probe_counts_every_token_over_the_time_a_whole_step_takes(sleeping_variant):
    """Measurement honesty: tokens/s is the batch's tokens over one step's median time, no more and not much less.

    Each step of this model sleeps ``layers x SLEEP_S`` inside its forward pass, so its throughput cannot exceed
    ``tokens / (layers x SLEEP_S)``: a probe that counted tokens twice, timed a part of the step or divided by the
    wrong number of calls breaks that ceiling, and one that timed more than the step (the warm-up, the set-up)
    falls far below it. Sleeping rather than computing keeps the bound independent of the CPU's speed and load.
    """
    seq, batch, layers = 64, 2, 2
    result = speed_probe(
        model_cfg={"dim": 32, "layers": layers, "heads": 2, "ff_mult": 2},
        attention={"name": "sleep_then_values"},
        seq_len=seq,
        batch_size=batch,
        causal=False,
        device="cpu",
        warmup=2,
        repeats=5,
        parts=["time"],
    )
    ceiling = batch * seq / (layers * SLEEP_S)
    for step in ("train", "infer"):
        assert 0.6 * ceiling < result[f"{step}_tokens_per_s"] <= ceiling, (step, result, ceiling)
        assert (
            result[f"{step}_tokens_per_s_min"] <= result[f"{step}_tokens_per_s"] <= result[f"{step}_tokens_per_s_max"]
        )
    assert result["timed_repeats"] >= 5 and result["infer_timed_repeats"] >= 5


def test_isolated_probe_reports_failures_with_their_status():
    common = {"model_cfg": {"dim": 32, "layers": 1, "heads": 2}, "batch_size": 1, "causal": False}
    common |= {"device": "cpu", "warmup": 0, "repeats": 1}
    with pytest.raises(PointFailed) as failed:
        measure_isolated(SPEED_PROBE, common | {"attention": {"name": "linformer", "k": 64}, "seq_len": 32}, threads=1)
    assert failed.value.status == "unsupported" and "k=64" in str(failed.value)
    with pytest.raises(PointFailed) as failed:
        measure_isolated(
            SPEED_PROBE, common | {"attention": {"name": "full"}, "seq_len": 32}, threads=1, timeout_s=0.01
        )
    assert failed.value.status == "timeout"
    result = measure_isolated(SPEED_PROBE, common | {"attention": {"name": "full"}, "seq_len": 32}, threads=1)
    assert result["train_tokens_per_s"] > 0 and result["peak_memory_mib"] > 0


def test_flop_count_of_full_includes_its_fused_attention_as_executed():
    model = {"dim": 32, "layers": 1, "heads": 2, "dim_head": None, "ff_mult": 2}
    flops = {
        name: speed_probe(
            model_cfg=model,
            attention=attention_config(name),
            seq_len=64,
            batch_size=2,
            causal=False,
            device="cpu",
            warmup=0,
            repeats=1,
            parts=["flops"],
        )["flops_per_step"]
        for name in ("full", "full_math")
    }
    # The fused kernel does what the textbook one does, plus recomputing the scores in its backward pass.
    recomputed_scores = 2 * 2 * 2 * 64 * 64 * 16  # 2 x batch x heads x n^2 x head dim, one layer
    assert flops["full"] == flops["full_math"] + recomputed_scores > recomputed_scores


def test_ddp_spawn_accuracy_point_inside_a_sweep(tmp_path, sweep_config):
    """Two gloo processes train one accuracy point; the record carries both devices' throughput."""
    cfg = sweep_config(
        "attention=full", "hardware=cpu_ddp", "sweep.seq_lens=[]", "optim.max_steps=8", "optim.val_every=4"
    )
    run_sweep(cfg)
    (record,) = store.read_records(tmp_path / "store")
    assert record["status"] == "ok", record.get("message")
    assert record["strategy"] == "ddp_spawn" and record["world_size"] == 2
    assert record["train_tokens_per_s_total"] == pytest.approx(2 * record["train_tokens_per_s_per_device"])
    assert 0 <= record["test_acc"] <= 1


def test_plain_ddp_inside_a_sweep_is_refused_before_any_work(tmp_path, sweep_config):
    with pytest.raises(ConfigError, match="ddp_spawn"):
        run_sweep(sweep_config("attention=full", "hardware=cpu_ddp", "hardware.strategy=ddp"))
    assert not (tmp_path / "store").exists()


def test_console_shows_one_line_per_point_and_the_report_path_and_nothing_else(tmp_path):
    """What a user sees from ``python -m runners.sweep``: progress lines, results, report; no third-party noise."""
    overrides = [o for o in TINY_SWEEP if not o.startswith("sweep.seq_lens")] + ["sweep.seq_lens=[32]"]
    command = [sys.executable, "-m", "runners.sweep", "attention=full", *overrides, "hydra.run.dir=hydra"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
    progress = [line for line in lines if line.startswith("[")]
    assert len(progress) == 2, lines  # one speed point, one accuracy point
    speed_line = r"\[1/2\] full speed n=32 \.\.\. train [\d,]+ tok/s, .* MiB, 2 rounds(, UNSTABLE)? \(\d+ s; ETA .*\)"
    assert re.fullmatch(speed_line, progress[0])
    accuracy_line = (
        r"\[2/2\] full accuracy n=32 mqar causal seed=0 lr=0.003 \.\.\. test acc [\d.]+ \(20 steps\) \(\d+ s\)"
    )
    assert re.fullmatch(accuracy_line, progress[1])
    timing = [line for line in lines if line.startswith(("timing ", "memory, ", "round "))]
    assert re.fullmatch(r"memory, one process per point: speed n=32 \(1, \d+ s\),", timing[1]), lines
    assert timing[2:] == ["round 1: speed n=32,", "round 2: speed n=32,"], lines  # each round's comparisons
    rest = [line for line in lines if not line.startswith(("[", "timing ", "memory, ", "round "))]
    # 20 steps of mqar teach exact attention nothing: the sweep says its ranking is not informative
    warning = "warning: The reference did not learn this setting; its ranking is not informative (bar: mean >= 0.95"
    assert rest[0].startswith(warning) and "mqar causal n=32: `full` " in rest[0], lines
    assert rest[1:] == [
        f"results: 2 points in {tmp_path / 'results' / 'store'} (table: results_table.csv)",
        f"report: {tmp_path / 'results' / 'report' / 'report.md'}",
    ], lines
    assert (tmp_path / "results" / "report" / "report.md").exists()


def test_main_job_writes_only_where_git_ignores():
    """The default results, report and wandb paths of conf/config.yaml are ignored: a sweep leaves a clean checkout."""
    defaults = OmegaConf.load(REPO / "conf" / "config.yaml")
    probe = [f"{defaults.results_dir}/points/x.json", f"{defaults.report_dir}/report.md", f"{defaults.wandb.dir}/w"]
    assert all(not path.startswith("reports/") for path in probe)
    ignored = subprocess.run(["git", "check-ignore", *probe], cwd=REPO, capture_output=True, text=True).stdout
    assert ignored.split() == probe


@pytest.mark.parametrize(("how", "status"), [("SIGKILL", "oom"), ("SIGSEGV", "error"), ("MemoryError", "oom")])
def test_a_worker_that_dies_ends_only_its_point_with_a_status(how, status):
    with pytest.raises(PointFailed) as failed:  # the worker imports helpers: pytest put tests/ on sys.path
        run_isolated("helpers:die", {"how": how}, threads=1)
    assert failed.value.status == status, str(failed.value)


def test_plan_repeats_accuracy_points_per_seed_and_rate_and_scores_every_variant(sweep_config):
    from runners.sweeping.plan import attention_list, plan_points

    cfg = sweep_config(
        "sweep.seq_lens=[]", "sweep.seeds=[0,1]", "sweep.lrs=[1e-3,3e-3]", "~sweep.accuracy.mqar.directions"
    )
    points = plan_points(cfg, attention_list(cfg))
    by_variant = {}
    for p in points:
        by_variant.setdefault(p["attention"]["name"], set()).add((p["direction"], p["seed"], p["optim"]["lr"]))
    expected = {(d, s, lr) for d in ("bidirectional", "causal") for s in (0, 1) for lr in (1e-3, 3e-3)}
    assert by_variant.keys() == set(variants.names()) and all(v == expected for v in by_variant.values())
    assert {p["task"]["seed"] for p in points} == {0, 1}  # the data follows the run's seed
    assert {p["task"]["causal"] for p in points if p["direction"] == "causal"} == {True}


def test_speed_points_go_in_each_direction_of_sweep_causal_and_a_bad_flag_is_refused(sweep_config):
    from runners.sweeping.plan import attention_list, plan_points

    cfg = sweep_config("attention=linear", "sweep.causal=[false,true]", "sweep.accuracy=null")
    points = plan_points(cfg, attention_list(cfg))
    assert sorted((p["causal"], p["seq_len"]) for p in points) == [(False, 32), (False, 64), (True, 32), (True, 64)]
    one = sweep_config("attention=linear", "sweep.causal=true", "sweep.accuracy=null")
    assert {p["causal"] for p in plan_points(one, attention_list(one))} == {True}
    with pytest.raises(ConfigError, match=r"sweep\.causal must be true, false or a list of distinct ones"):
        run_sweep(sweep_config("attention=linear", "sweep.causal=[true,true]"))


def test_state_sizes_plan_each_accuracy_point_once_per_knob_value_for_the_decoding_variants(sweep_config):
    from runners.sweeping.plan import attention_list, plan_points

    cfg = sweep_config(
        "sweep.seq_lens=[]",
        "sweep.variants=decoding",
        "sweep.state_sizes={full:{model.dim:[16,32]},local:{window:[4,8,16]},based:{feature_dim:[4,8],window:16}}",
    )
    points = plan_points(cfg, attention_list(cfg))
    assert {p["attention"]["name"] for p in points} == set(variants.decoding_names())
    full = [p for p in points if p["attention"]["name"] == "full"]
    assert sorted((p["model"]["dim"], p["state_knob"]) for p in full) == [(16, "dim=16"), (32, "dim=32")]
    local = [p for p in points if p["attention"]["name"] == "local"]
    assert sorted(p["attention"]["window"] for p in local) == [4, 8, 16]
    assert {p["state_knob"] for p in local} == {"window=4", "window=8", "window=16"}
    based = [p["attention"] for p in points if p["attention"]["name"] == "based"]  # window held fixed
    assert sorted((a["feature_dim"], a["window"]) for a in based) == [(4, 16), (8, 16)]
    linear = [p for p in points if p["attention"]["name"] == "linear"]
    assert len(linear) == 1 and "state_knob" not in linear[0]  # no knob: planned as before, same key
    chosen = sweep_config("sweep.seq_lens=[]", "sweep.variants=[full,linear]")
    assert [a["name"] for a in attention_list(chosen)] == ["full", "linear"]


def test_a_variant_list_without_full_gets_the_baseline_beside_it_unless_turned_off(sweep_config):
    from runners.sweeping.plan import attention_list

    with_full = sweep_config("sweep.variants=[linear,local]", "sweep.baselines=[full]")
    assert [a["name"] for a in attention_list(with_full)] == [
        "linear",
        "local",
        "full",
    ]
    off = sweep_config("sweep.variants=[linear]", "sweep.baselines=[]")
    assert [a["name"] for a in attention_list(off)] == ["linear"]


def test_bad_state_sizes_and_variant_lists_are_refused_naming_what_is_allowed(sweep_config):
    with pytest.raises(ConfigError, match=r"sweep\.variants: unknown \['ful'\]; registered: based, "):
        run_sweep(sweep_config("sweep.variants=[ful]"))
    with pytest.raises(ConfigError, match=r"use all, decoding or a list of names"):
        run_sweep(sweep_config("sweep.variants=decode"))
    with pytest.raises(
        ConfigError, match=r"sweep\.state_sizes\.local: unknown knob 'windows'; local has \['model\.dim', 'window'\]"
    ):
        run_sweep(sweep_config("sweep.variants=decoding", "sweep.state_sizes={local:{windows:[4]}}"))
    with pytest.raises(ConfigError, match=r"sweep\.state_sizes\.local\.window must be a list of positive integers"):
        run_sweep(sweep_config("sweep.variants=decoding", "sweep.state_sizes={local:{window:[0]}}"))
    with pytest.raises(ConfigError, match=r"model\.dim=31 is not a multiple of model\.heads=2"):
        run_sweep(sweep_config("sweep.variants=decoding", "sweep.state_sizes={full:{model.dim:[31]}}"))
    with pytest.raises(ConfigError, match=r"sweep\.state_sizes: unknown variant 'nope'"):
        run_sweep(sweep_config("sweep.variants=decoding", "sweep.state_sizes={nope:{window:[4]}}"))


def test_bad_accuracy_settings_are_refused_before_any_work(sweep_config):
    with pytest.raises(ConfigError, match="unknown task 'mqra'; tasks: listops, lookup, mqar"):
        run_sweep(sweep_config("+sweep.accuracy.typo={task:mqra,seq_lens:[32]}"))
    with pytest.raises(
        ConfigError, match=r"directions: \['causal'\] not possible; listops can be: \['bidirectional'\]"
    ):
        run_sweep(sweep_config("+sweep.accuracy.listops={seq_lens:[64],directions:[causal]}"))
    with pytest.raises(ConfigError, match=r"unknown task argument\(s\) \['num_pair'\]"):
        run_sweep(sweep_config("+sweep.accuracy.mqar.num_pair=3"))
    with pytest.raises(ConfigError, match=r"\['causal'\] are set per point by the sweep; use seq_lens, directions"):
        run_sweep(sweep_config("+sweep.accuracy.mqar.causal=false"))
    with pytest.raises(ConfigError, match=r"sweep\.accuracy\.far at seq_len=32: num_queries=9 must be"):
        run_sweep(sweep_config("+sweep.accuracy.far={task:mqar,seq_lens:[32],num_queries:9}"))
    with pytest.raises(ConfigError, match=r"sweep\.seeds is empty"):
        run_sweep(sweep_config("sweep.seeds=[]"))
    with pytest.raises(ConfigError, match=r"sweep\.accuracy\.mqar\.model: unknown key\(s\) \['layer'\]"):
        run_sweep(sweep_config("+sweep.accuracy.mqar.model.layer=1"))
    with pytest.raises(ConfigError, match=r"sweep\.maps_settings: unknown key\(s\) \['budget_seed'\]"):
        run_sweep(sweep_config("sweep.maps=true", "+sweep.maps_settings.budget_seed=[0]"))
    with pytest.raises(ConfigError, match=r"sweep\.accuracy_jobs=0 is out of range"):
        run_sweep(sweep_config("attention=full", "sweep.accuracy_jobs=0"))


def test_plan_times_first_and_applies_each_entrys_model_and_the_maps_settings(sweep_config):
    """Speed and decode points come before maps and accuracy; an entry's model and the maps overrides apply."""
    from runners.sweeping.plan import PROBE_ORDER, attention_list, plan_points

    cfg = sweep_config(
        "sweep.decode_lens=[32]",
        "sweep.maps=true",
        "sweep.maps_lens=[32]",
        "sweep.maps_settings={budget_seeds:[5]}",
        "+sweep.accuracy.mqar.model={layers:3}",
    )
    points = plan_points(cfg, attention_list(cfg))
    order = [PROBE_ORDER.index(p["probe"]) for p in points]
    assert order == sorted(order) and {p["probe"] for p in points} == {"speed", "decode", "maps", "accuracy"}
    assert {p["model"]["layers"] for p in points if p["probe"] == "accuracy"} == {3}
    assert {p["model"]["layers"] for p in points if p["probe"] != "accuracy"} == {cfg.model.layers}
    assert {tuple(p["approximation"]["budget_seeds"]) for p in points if p["probe"] == "maps"} == {(5,)}


def test_the_duration_estimate_counts_planned_steps_at_a_measured_step_time(sweep_config, capsys):
    from runners.sweeping.estimate import estimate_seconds
    from runners.sweeping.plan import attention_list, plan_points
    from runners.sweeping.run import print_estimate

    cfg = sweep_config("attention=full", "sweep.seq_lens=[]")
    points = plan_points(cfg, attention_list(cfg))
    short, measured = estimate_seconds(points, device="cpu")
    longer = [p | {"optim": p["optim"] | {"max_steps": 10 * p["optim"]["max_steps"]}} for p in points]
    assert measured == 1 and 0 < short < estimate_seconds(longer, device="cpu")[0] < 20 * short
    print_estimate(points, cfg)
    assert re.search(
        r"about \d+-\d+ min \(2 timing rounds, up to 2 where intervals are wide\): 1 training runs, "
        r"20 steps in all",
        capsys.readouterr().err,
    )


def test_the_estimate_extrapolates_long_steps_from_1024_and_2048_instead_of_timing_them(monkeypatch):
    from runners.sweeping import estimate

    timed = []

    def step(point, *, seq_len, batch_size, causal, device):
        timed.append(seq_len)
        return 1e-6 * seq_len**1.5

    monkeypatch.setattr(estimate, "step_seconds", step)
    point = {"attention": {"name": "full"}, "model": {}, "probe": "decode", "seq_len": 8192, "batch_size": 1}
    cache = {}
    assert estimate._cached(cache, point, (8192, 1, True), "cpu") == pytest.approx(1e-6 * 8192**1.5)
    assert sorted(timed) == [1024, 2048]  # 8192 itself never run
    monkeypatch.setattr(estimate, "step_seconds", lambda *a, **k: 2e-9 * k["seq_len"] ** 3)  # held to quadratic
    assert estimate._cached({}, point, (4096, 1, True), "cpu") == pytest.approx(2e-9 * 2048**3 * 4)
    seconds, measured = estimate.estimate_seconds([point], device="cpu")
    assert measured == 2 and seconds > 0


def test_the_estimate_prices_each_timing_round_with_full_timed_beside_the_variant(monkeypatch):
    from runners.sweeping import estimate

    steps = {"full": 0.2, "linear": 0.1}
    monkeypatch.setattr(estimate, "step_seconds", lambda point, **_: steps[point["attention"]["name"]])
    point = {"probe": "speed", "model": {}, "seq_len": 64, "batch_size": 2, "causal": False, "warmup": 1, "repeats": 3}
    linear = point | {"attention": {"name": "linear"}, "min_time_s": 0.0}
    once, per_round, measured = estimate.estimate_parts([linear], device="cpu")
    paired = 0.1 + 0.2  # linear's step and full's, in turn
    start = estimate.PROCESS_START_S
    assert per_round == pytest.approx(start + paired * 4 / 3 + 3 * paired + 3 * paired / 3)
    assert once == pytest.approx(start + 5 * 0.1) and measured == 2
    assert estimate.estimate_seconds([linear], device="cpu", rounds=3)[0] == pytest.approx(once + 3 * per_round)
    slow = linear | {"min_time_s": 2.0}  # each model's steps add up to min_time_s, training and forward each
    assert estimate.estimate_parts([slow], device="cpu")[1] == pytest.approx(start + paired * 4 / 3 + 4.0 + 4.0)


def test_the_estimate_times_a_side_by_side_run_with_its_share_of_the_threads(sweep_config, monkeypatch):
    from runners.sweeping import estimate

    seen = []
    monkeypatch.setattr(estimate, "_timed_step", lambda *a, **k: seen.append(torch.get_num_threads()) or 0.01)
    before = torch.get_num_threads()
    point = {"attention": {"name": "full"}, "model": {}, "hardware": {"threads": 1}}
    estimate.step_seconds(point, seq_len=32, batch_size=2, causal=True, device="cpu")
    assert seen == [1] and torch.get_num_threads() == before


def test_one_variant_sweep_is_compared_with_the_baseline_at_the_same_points(tmp_path, sweep_config):
    """`attention=X` plans `full` beside X, so the report's relative tables are filled at every length."""
    cfg = sweep_config("attention=linformer", "attention.k=16", "sweep.baselines=[full]", "sweep.seeds=[0]")
    run_sweep(cfg)
    records = store.read_records(tmp_path / "store")
    speed = {(r["variant"], r["seq_len"]) for r in records if r["probe"] == "speed" and r["status"] == "ok"}
    assert speed == {(v, n) for v in ("linformer", "full") for n in (32, 64)}
    report = (tmp_path / "report" / "report.md").read_text()
    relative = report.split("#### Relative to full")[1].split("#### Crossover")[0]
    assert re.search(r"\| linformer \| \d+\.\d\d \| \d+\.\d\d \|", relative), relative  # filled at both lengths
    assert "**Baselines**: `full`" in report and "Nothing to show" not in relative
    assert "| linformer | n=32 |" in report  # TINY's task is causal: in the Not scored table, not a row of n/a


def test_baselines_are_reused_from_the_store_checked_and_can_be_turned_off(tmp_path, sweep_config):
    from runners.sweeping.plan import attention_list, plan_points

    with_baseline = sweep_config("attention=local", "sweep.baselines=[full]")
    full_alone = sweep_config("attention=full")
    keys = {store.point_key(p) for p in plan_points(with_baseline, attention_list(with_baseline))}
    assert {store.point_key(p) for p in plan_points(full_alone, attention_list(full_alone))} < keys  # same points
    assert [a["name"] for a in attention_list(sweep_config("attention=local", "sweep.baselines=[]"))] == ["local"]
    assert [a["name"] for a in attention_list(sweep_config("attention=full", "sweep.baselines=[full]"))] == ["full"]
    with pytest.raises(ConfigError, match=r"sweep\.baselines: unknown attention variant 'fulll'.*registered: .*full"):
        run_sweep(sweep_config("attention=local", "sweep.baselines=[fulll]"))
