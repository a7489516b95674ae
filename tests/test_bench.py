"""Benchmark mechanics on tiny sizes: records, failures as statuses, memory probe, peers."""

from __future__ import annotations

import json

import pytest
import torch

import variants
from runners import bench
from runners.measure import core_probe, flops, memory, timing
from runners.measure.peers import PEERS

TINY = ["--batch", "1", "--heads", "2", "--dim-head", "8", "--repeats", "3"]


def test_bench_records_every_point_and_prints_tables(tmp_path, capsys):
    out = tmp_path / "bench.jsonl"
    records = bench.main(["--variants", "full", "linformer", "--seq-lens", "256", *TINY, "--out", str(out)])
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == len(records) == 3  # full in both directions, linformer bidirectional only
    assert [r["label"] for r in lines] == ["full (bidir)", "full (causal)", "linformer (bidir)"]
    assert all(r["status"] == "ok" and r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 and r["peak_mib"] > 0 for r in lines)
    printed = capsys.readouterr().out
    assert "peak memory of one forward+backward step" in printed and "linformer (bidir)" in printed
    assert all(r["fwd_bwd_gflops_per_s"] > 0 and r["hardware"]["matmul_gflops"]["fp32"] > 0 for r in lines)
    assert "% of the measured matmul peak" in printed
    # the floor is the output and three input gradients: 4 x (1, 2, 256, 8) fp32
    assert all(r["floor_mib"] == 4 * 2 * 256 * 8 * 4 / 2**20 for r in lines)
    assert "working memory: peak minus the floor" in printed
    # linformer's ratio to full comes from full's core timed call by call in linformer's own processes
    linformer = lines[2]
    assert linformer["fwd_bwd_ms_paired_ratio"] > 0 and linformer["ratio_reference"] == "full"
    assert linformer["fwd_bwd_ms_ratio_lo"] <= linformer["fwd_bwd_ms_ratio"] <= linformer["fwd_bwd_ms_ratio_hi"]


def test_bench_prints_each_cores_crossover_with_full_from_the_records():
    def point(variant, causal, n, ms, mib):
        return {"variant": variant, "impl": bench.OURS, "causal": causal, "seq_len": n, "status": "ok"} | {
            "fwd_ms": ms,
            "fwd_bwd_ms": 2 * ms,
            "peak_mib": mib,
        }

    frame = bench.pd.DataFrame(
        [point("full", False, n, 1e-3 * n * n, 1e-3 * n * n) for n in (256, 1024, 4096)]
        + [point("linear", False, n, 0.5 * n, 0.5 * n) for n in (256, 1024, 4096)]  # meet full's at n = 500
        + [point("full", True, n, 1e-3 * n * n, 1.0) for n in (256, 1024, 4096)]
        + [point("linear", True, n, 0.5 * n, 2.0) for n in (256, 1024, 4096)]
    )
    table = bench.core_crossovers(frame)
    assert table.loc["linear", "faster forward from n ="] == "~500 (between 256 and 1,024)"
    assert table.loc["linear (causal)", "leaner from n ="].startswith("never")


@pytest.mark.parametrize("name", variants.names())
def test_every_core_runs_in_bf16(name):
    result = core_probe.core_probe(
        variant=name,
        impl=core_probe.OURS,
        causal=False,
        hparams={},
        seq_len=256,
        batch=1,
        heads=2,
        dim_head=8,
        repeats=1,
        dtype="bf16",
        parts=["time", "flops"],
    )
    assert result["fwd_bwd_ms"] > 0 and result["fwd_bwd_flops"] > 0


def test_bench_dtype_is_recorded(tmp_path):
    out = tmp_path / "bench.jsonl"
    bf16 = ["--dtype", "bf16", "--allow-emulated-bf16"]  # the same path on a CPU with or without native bf16
    records = bench.main(["--variants", "local", "--seq-lens", "128", *TINY, *bf16, "--out", str(out)])
    assert [(r["status"], r["dtype"]) for r in records] == [("ok", "bf16")] * 2


@pytest.mark.parametrize("causal", [False, True])
def test_flop_count_sees_the_fused_cpu_attention_kernel(causal):
    batch, heads, seq, dim = 2, 3, 64, 16
    q, k, v = (torch.randn(batch, heads, seq, dim, requires_grad=True) for _ in range(3))
    counted = flops.count_flops(
        lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal).sum().backward()
    )
    forward = 2 * (2 * batch * heads * seq * seq * dim)  # scores and weighted values
    backward = 5 * (2 * batch * heads * seq * seq * dim)  # recomputed scores, dV, dP, dQ, dK
    assert counted == (forward + backward) // (2 if causal else 1)


def test_a_point_that_times_out_is_recorded_and_longer_ones_skipped(tmp_path):
    out = tmp_path / "bench.jsonl"
    args = ["--variants", "full_math", "--seq-lens", "32", "64", *TINY, "--timeout", "0.01", "--out", str(out)]
    records = bench.main(args)
    assert [r["status"] for r in records] == ["timeout"] * 4
    by_len = {n: [r["message"] for r in records if r["seq_len"] == n] for n in (32, 64)}
    assert all("exceeded" in m for m in by_len[32]) and all("skipped" in m for m in by_len[64])
    assert len(out.read_text().splitlines()) == 4, "failed points are results too"


def test_unknown_variant_is_refused_with_the_registered_names():
    with pytest.raises(Exception, match=r"registered: .*full"):
        bench.main(["--variants", "nope"])


def test_growth_per_doubling():
    import pandas as pd

    values = pd.Series({1024: 1.0, 2048: 2.0, 4096: 4.0, 8192: 8.0})
    assert bench.growth_per_doubling(values, 2048, 8192) == pytest.approx(2.0)
    assert bench.growth_per_doubling(values**2, 2048, 8192) == pytest.approx(4.0)


@pytest.mark.skipif(not memory.cpu_peak_supported(), reason="needs Linux /proc/self/clear_refs")
def test_cpu_peak_memory_sees_a_step_allocation_and_not_earlier_ones():
    before = torch.ones(32 * 2**20 // 4)  # 32 MiB live before the step: not the step's

    def allocate_64_mib():
        x = torch.ones(64 * 2**20 // 4)
        return float(x.sum())

    peak = memory.cpu_step_peak(allocate_64_mib)
    assert 60 < peak.added_mib < 80
    assert memory.cpu_step_peak(lambda: None).added_mib < 8
    assert peak.process_mib > 32 + 60  # the process peak holds what was live before, too
    assert peak.method == memory.RESIDENT_SET
    del before


def test_cpu_live_peak_counts_a_step_to_the_byte_and_sees_frees_of_what_an_earlier_step_left():
    mib = 2**20 // 4  # float32 elements per MiB
    before = torch.ones(32 * mib)  # live before the step: not the step's
    carried = [torch.ones(16 * mib)]  # what the last step left (like last step's gradients)

    def step():
        carried[0] = None  # freed first: the step's peak is over what is live *now*, as on CUDA
        x = torch.ones(64 * mib)
        carried[0] = torch.ones(16 * mib)
        return float(x.sum())

    # -16 + 64 + 16: 64 MiB above what was live when it began (80 if the first free went unseen)
    assert memory.cpu_live_step_mib(step) == pytest.approx(64, abs=0.01)
    assert memory.cpu_live_step_mib(lambda: None) == 0
    del before


def test_cpu_live_peak_of_a_model_training_step_repeats_exactly_and_reads_below_the_resident_set():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 256))
    optimizer = torch.optim.AdamW(model.parameters())
    batch = torch.randn(512, 256)

    def step():
        optimizer.zero_grad(set_to_none=True)
        model(batch).square().mean().backward()
        optimizer.step()

    step()
    first, second = memory.cpu_live_step_mib(step), memory.cpu_live_step_mib(step)
    assert first == second
    activations = 2 * 512 * 1024 * 4 / 2**20  # the hidden layer before and after GELU, kept for backward
    assert first >= activations
    peak = memory.measure_step_peak(step, torch.device("cpu"))
    assert peak.added_mib == first and peak.resident_added_mib is not None and peak.method == memory.LIVE_TENSORS


def test_tensor_mib_counts_parameters_gradients_optimizer_state_and_batch_once():
    layer = torch.nn.Linear(1024, 256, bias=False)  # 1 MiB of weights
    optimizer = torch.optim.AdamW(layer.parameters())
    batch = torch.zeros(256, 1024)  # 1 MiB
    assert memory.tensor_mib(layer, optimizer, batch) == pytest.approx(2.0)
    layer(batch).sum().backward()
    optimizer.step()  # gradient + two AdamW moments (+ a scalar step counter)
    assert memory.tensor_mib(layer, optimizer, batch, batch[:10]) == pytest.approx(5.0, abs=1e-3)


class ScriptedClock:
    """``time.perf_counter`` stand-in: each call of the timed function advances it by the next scripted duration."""

    def __init__(self, durations):
        self.now = 0.0
        self.durations = list(durations)
        self.calls = 0

    def perf_counter(self):
        return self.now

    def work(self):
        self.now += self.durations[self.calls]
        self.calls += 1


def test_timing_drops_warmup_and_reports_median_min_max_of_the_timed_calls(monkeypatch):
    clock = ScriptedClock([100.0, 100.0, 0.3, 0.1, 0.5, 0.2, 0.4])  # two slow warm-up calls, then five timed
    monkeypatch.setattr(timing.time, "perf_counter", clock.perf_counter)
    result = timing.time_calls(clock.work, device=torch.device("cpu"), warmup=2, repeats=5)
    assert clock.calls == 7 and result.repeats == 5
    assert (result.median_s, result.min_s, result.max_s) == pytest.approx((0.3, 0.1, 0.5))
    assert result.spread == pytest.approx((0.5 - 0.1) / 0.3)


def test_timing_budget_stops_a_slow_point_after_three_calls(monkeypatch):
    clock = ScriptedClock([1.0, 4.0, 4.0, 4.0, 4.0, 4.0])
    monkeypatch.setattr(timing.time, "perf_counter", clock.perf_counter)
    result = timing.time_calls(clock.work, device=torch.device("cpu"), warmup=1, repeats=5, budget_s=10.0)
    assert result.repeats == 3 and clock.calls == 4 and result.median_s == pytest.approx(4.0)


# ------------------------------------------------------------ peers compute the same thing


def _peer(name, **kwargs):
    peer = PEERS[name]
    if not peer.available():
        pytest.skip(f"{peer.package} not installed (pip install -e '.[peers]')")
    return peer.build(**kwargs)


@pytest.mark.parametrize("causal", [False, True])
def test_local_matches_local_attention_package(causal):
    import variants

    q, k, v = (torch.randn(2, 2, 96, 16) for _ in range(3))
    _, peer = _peer("local", heads=2, dim_head=16, seq_len=96, causal=causal, hparams={"window": 16})
    ours = variants.build("local", heads=2, dim_head=16, max_seq_len=None, causal=causal, window=16)
    torch.testing.assert_close(ours(q, k, v), peer(q, k, v), atol=1e-5, rtol=1e-5)


def test_linformer_matches_linformer_package_with_the_same_projections():
    import variants

    x = torch.randn(2, 2, 64, 16)
    module, peer = _peer(
        "linformer", heads=2, dim_head=16, seq_len=64, causal=False, hparams={"k": 8, "share_kv": False}
    )
    ours = variants.build("linformer", heads=2, dim_head=16, max_seq_len=64, k=8)
    with torch.no_grad():
        ours.proj_k.copy_(module.proj_k.T)
        ours.proj_v.copy_(module.proj_v.T)
    torch.testing.assert_close(ours(x, x, x), peer(x, x, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_performer_matches_performer_pytorch_with_the_same_features(causal):
    import variants

    q, k, v = (torch.randn(2, 2, 128, 16) * 0.5 for _ in range(3))
    module, peer = _peer("performer", heads=2, dim_head=16, seq_len=128, causal=causal, hparams={"nb_features": 64})
    ours = variants.build("performer", heads=2, dim_head=16, max_seq_len=None, causal=causal, nb_features=64)
    with torch.no_grad():
        ours.features.copy_(module.projection_matrix * 16**-0.25)
    # The peer adds eps=1e-4 to every feature; we do not (it would leak the future when causal).
    torch.testing.assert_close(ours(q, k, v), peer(q, k, v), atol=2e-3, rtol=2e-2)


def test_nystrom_adapter_computes_our_nystrom():
    """One sequence and head: the package takes its pseudo-inverse's scale over the whole batch, ours per head."""
    import variants

    q, k, v = (torch.randn(1, 1, 64, 16) for _ in range(3))
    hparams = {"num_landmarks": 8, "pinv_iterations": 6, "residual": True, "residual_kernel": 5}
    module, peer = _peer("nystrom", heads=1, dim_head=16, seq_len=64, causal=False, hparams=hparams)
    ours = variants.build("nystrom", heads=1, dim_head=16, max_seq_len=None, **hparams)
    with torch.no_grad():
        ours.residual.copy_(module.res_conv.weight)
    torch.testing.assert_close(ours(q, k, v), peer(q, k, v), atol=1e-5, rtol=1e-5)


def test_reformer_adapter_runs_the_peer_on_shared_qk():
    q, k, v = (torch.randn(2, 2, 64, 16) for _ in range(3))
    hparams = {"bucket_size": 8, "n_hashes": 2}
    _, peer = _peer("reformer", heads=2, dim_head=16, seq_len=64, causal=False, hparams=hparams)
    out = peer(q, k, v)
    assert out.shape == q.shape and torch.isfinite(out).all()


def test_bench_profile_prints_top_operators_and_achieved_gflops_against_the_peak(tmp_path, capsys):
    out = tmp_path / "bench.jsonl"
    records = bench.main(["--profile", "--variants", "retention", "--seq-lens", "128", *TINY, "--out", str(out)])
    assert records == [] and not out.exists()  # a profile measures nothing for the records
    printed = capsys.readouterr().out
    for label in ("retention (bidir) n=128", "retention (causal) n=128"):
        assert label in printed
    assert printed.count("% of the measured matmul peak") == 2
    assert "aten::bmm" in printed or "aten::matmul" in printed  # the operators the core spends its time in


def test_profile_core_counts_the_steps_matmul_flops_and_ranks_operators_by_self_time():
    from runners.measure.core_profile import profile_core

    result = profile_core(
        variant="full", impl="ours", causal=False, hparams={}, seq_len=64, batch=1, heads=2, dim_head=8, top=5
    )
    assert result["fwd_bwd_flops"] > 0 and result["gflops_per_s"] > 0
    rows = result["operators"]
    assert 0 < len(rows) <= 5 and all(row["calls"] > 0 for row in rows)
    assert [row["self_ms"] for row in rows] == sorted((row["self_ms"] for row in rows), reverse=True)


def test_profile_core_reports_the_profiled_steps_time_and_page_faults_beside_the_unprofiled_ones():
    from runners.measure.core_profile import profile_core

    result = profile_core(
        variant="full", impl="ours", causal=False, hparams={}, seq_len=64, batch=1, heads=2, dim_head=8, top=5
    )
    assert result["profiled_ms"] > 0
    for key in ("page_faults_per_step", "profiled_page_faults_per_step"):
        assert result[key] is None or result[key] >= 0


def test_a_profile_that_strayed_from_the_unprofiled_step_says_so_and_one_that_did_not_stays_quiet():
    from runners.measure.core_profile import format_profile

    base = {"fwd_bwd_ms": 50.0, "fwd_bwd_flops": 1e9, "gflops_per_s": 20.0, "operators": []}
    quiet = base | {"profiled_ms": 55.0, "page_faults_per_step": 200.0, "profiled_page_faults_per_step": 300.0}
    assert "caution" not in format_profile("x", 64, quiet, 100.0)
    faulted = quiet | {"profiled_ms": 120.0, "profiled_page_faults_per_step": 20_000.0}
    text = format_profile("x", 64, faulted, 100.0)
    assert "caution: profiled, the step took 120.0 ms (50.0 ms unprofiled)" in text
    assert "20,000 page faults per step (200 unprofiled)" in text and "upper bounds" in text
    slower = quiet | {"profiled_ms": 90.0}
    assert "called many times" in format_profile("x", 64, slower, 100.0)
    uncounted = slower | {"page_faults_per_step": None, "profiled_page_faults_per_step": None}  # no resource module
    assert "caution" in format_profile("x", 64, uncounted, 100.0)
