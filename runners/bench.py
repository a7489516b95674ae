"""Attention-core benchmark: time and peak memory of every variant, side by side with peers.

    python -m runners.bench                       # every variant, n = 256 ... 8192, CPU
    python -m runners.bench --peers               # + the public reference packages (".[peers]")
    python -m runners.bench --variants local performer --seq-lens 1024 4096

Only the mixing core is measured (no projections): q, k, v of shape
``(batch, heads, n, dim_head)``. Each point runs in a fresh subprocess so that
one point's memory cannot hide in another's, and an out-of-memory kill or a
timeout is recorded as that point's status while the benchmark goes on. Per
point: forward time (no graph), forward+backward time (median of repeats after
warm-up) and the peak memory of one forward+backward step (see
:mod:`runners.memory`). Every finished point is appended to a JSON-lines file.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

DEFAULT_SEQ_LENS = [256, 512, 1024, 2048, 4096, 8192]


@dataclass(frozen=True)
class Case:
    """One benchmark line: an implementation in one direction, over all lengths."""

    variant: str
    causal: bool
    impl: str = "ours"  # "ours" or the peer's package name
    hparams: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        direction = "causal" if self.causal else "bidir"
        who = "" if self.impl == "ours" else f" [{self.impl}]"
        return f"{self.variant}{who} ({direction})"


# ---------------------------------------------------------------------- worker side


def _make_call(case: Case, *, heads: int, dim_head: int, seq_len: int):
    import variants
    from runners.peers import PEERS

    if case.impl == "ours":
        module = variants.build(
            case.variant, heads=heads, dim_head=dim_head, max_seq_len=seq_len, causal=case.causal, **case.hparams
        )
        return module, module
    peer = PEERS[case.variant]
    return peer.build(heads=heads, dim_head=dim_head, seq_len=seq_len, causal=case.causal, hparams=case.hparams)


def run_point(case: Case, *, seq_len: int, batch: int, heads: int, dim_head: int, repeats: int) -> dict[str, Any]:
    """Measure one point in this process (the benchmark calls it in a fresh subprocess)."""
    import torch

    from runners.memory import step_peak_mib
    from runners.timing import time_calls

    device = torch.device("cpu")
    torch.manual_seed(0)
    module, call = _make_call(case, heads=heads, dim_head=dim_head, seq_len=seq_len)
    module.to(device)
    q, k, v = (torch.randn(batch, heads, seq_len, dim_head, device=device, requires_grad=True) for _ in range(3))
    grad_out = torch.randn(batch, heads, seq_len, dim_head, device=device)

    def forward() -> None:
        with torch.no_grad():
            call(q, k, v)

    def forward_backward() -> None:
        call(q, k, v).backward(grad_out)
        for t in (q, k, v):
            t.grad = None
        module.zero_grad(set_to_none=True)

    # Timing first, with the default allocator; then memory (see runners.memory for why this order).
    fwd = time_calls(forward, device=device, warmup=1, repeats=repeats, budget_s=20.0)
    step = time_calls(forward_backward, device=device, warmup=1, repeats=repeats, budget_s=20.0)
    peak_mib = step_peak_mib(forward_backward, device, repeats=3 if step.median_s < 5 else 1)
    return {
        "fwd_ms": fwd.median_s * 1e3,
        "fwd_bwd_ms": step.median_s * 1e3,
        "fwd_bwd_spread": step.spread,
        "repeats": step.repeats,
        "peak_mib": peak_mib,
        "threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------------- driver side


def measure_in_subprocess(case: Case, seq_len: int, args: argparse.Namespace) -> dict[str, Any]:
    """Run one point in a fresh interpreter; failures come back as a status, never an exception."""
    spec = {
        "case": asdict(case),
        "seq_len": seq_len,
        "batch": args.batch,
        "heads": args.heads,
        "dim_head": args.dim_head,
        "repeats": args.repeats,
    }
    from runners.failures import PointFailed, run_json_worker
    from runners.memory import timing_env

    env = timing_env()
    if args.threads:
        env |= {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    command = [sys.executable, "-m", "runners.bench", "--worker", json.dumps(spec)]
    try:
        return {"status": "ok"} | run_json_worker(command, timeout_s=args.timeout, env=env, any_signal_is_oom=True)
    except PointFailed as failed:
        text = str(failed).lower()
        status = "oom" if failed.status == "error" and "memory" in text and "alloc" in text else failed.status
        return {"status": status, "message": str(failed)[:300]}


def default_hparams(variant: str) -> dict[str, Any]:
    """The variant's own defaults, which the peer is given too (same settings)."""
    import variants

    return variants.hyperparameters(variant)


def build_cases(names: list[str], *, with_peers: bool) -> list[Case]:
    import variants
    from runners.peers import PEERS

    cases = []
    for name in names:
        hparams = default_hparams(name)
        directions = [False, True] if variants.get(name).supports_causal else [False]
        for causal in directions:
            cases.append(Case(name, causal, "ours", hparams))
            peer = PEERS.get(name)
            if with_peers and peer is not None:
                if not peer.available():
                    raise SystemExit(f"--peers needs {peer.package}: pip install -e '.[peers]'")
                cases.append(Case(name, causal, peer.package, hparams))
    return cases


def growth_per_doubling(values: pd.Series, lo: int, hi: int) -> float:
    """Average factor per doubling of n between ``lo`` and ``hi`` (geometric mean)."""
    if lo >= hi or lo not in values.index or hi not in values.index or pd.isna(values[lo]) or pd.isna(values[hi]):
        return float("nan")
    return (values[hi] / values[lo]) ** (1 / math.log2(hi / lo))


def summarize(records: list[dict[str, Any]], seq_lens: list[int]) -> str:
    """Tables: time and memory per case and n, growth per doubling, ratio to peer."""
    frame = pd.DataFrame(records)
    frame["cell"] = frame.apply(
        lambda r: r["status"] if r["status"] != "ok" else f"{r['fwd_ms']:.1f}/{r['fwd_bwd_ms']:.1f}", axis=1
    )
    ok = frame[frame.status == "ok"]
    out = ["time per call, ms: forward/forward+backward"]
    out.append(frame.pivot(index="label", columns="seq_len", values="cell").to_string())
    out.append("\npeak memory of one forward+backward step, MiB")
    mem = frame.assign(
        mem=frame.apply(lambda r: f"{r['peak_mib']:.0f}" if r["status"] == "ok" else r["status"], axis=1)
    )
    out.append(mem.pivot(index="label", columns="seq_len", values="mem").to_string())
    lo, hi = (2048, 8192) if {2048, 8192} <= set(seq_lens) else (min(seq_lens), max(seq_lens))
    growth = []
    for label, group in ok.groupby("label"):
        g = group.set_index("seq_len")
        growth.append(
            {
                "label": label,
                f"fwd x/doubling {lo}-{hi}": growth_per_doubling(g.fwd_ms, lo, hi),
                "fwd+bwd x/doubling": growth_per_doubling(g.fwd_bwd_ms, lo, hi),
                "memory x/doubling": growth_per_doubling(g.peak_mib, lo, hi),
            }
        )
    if growth:
        out.append(f"\ngrowth per doubling of n from {lo} to {hi} (1.0 = constant, 2.0 = linear, 4.0 = quadratic)")
        out.append(pd.DataFrame(growth).set_index("label").round(2).to_string())
    peers = ok[ok.impl != "ours"]
    if not peers.empty:
        ours = ok[ok.impl == "ours"].set_index(["variant", "causal", "seq_len"])
        rows = []
        for _, p in peers.iterrows():
            key = (p.variant, p.causal, p.seq_len)
            if key in ours.index:
                mine = ours.loc[key]
                rows.append(
                    {
                        "variant": f"{p.variant} ({'causal' if p.causal else 'bidir'}) vs {p.impl}",
                        "seq_len": p.seq_len,
                        "fwd": mine.fwd_ms / p.fwd_ms,
                        "fwd+bwd": mine.fwd_bwd_ms / p.fwd_bwd_ms,
                        "memory": mine.peak_mib / p.peak_mib if p.peak_mib > 0 else float("nan"),
                    }
                )
        if rows:
            ratio = pd.DataFrame(rows).pivot(index="variant", columns="seq_len")
            out.append("\nours / peer (below 1.0: ours is faster or leaner)")
            out.append(ratio.round(2).to_string())
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", help="registered names (default: all)")
    parser.add_argument("--seq-lens", nargs="+", type=int, default=DEFAULT_SEQ_LENS)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--dim-head", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per point (median reported)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per point before it is 'timeout'")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads per point (0: torch's default)")
    parser.add_argument("--peers", action="store_true", help="also run the reference packages (.[peers])")
    parser.add_argument("--out", type=Path, default=Path("results/bench.jsonl"), help="JSON lines, appended")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        result = run_point(Case(**spec.pop("case")), **spec)
        print(json.dumps(result))
        return [result]

    import variants

    names = args.variants or variants.names()
    for name in names:
        variants.get(name)  # unknown names fail here, listing the registered ones
    cases = build_cases(names, with_peers=args.peers)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    records = []
    total = len(cases) * len(args.seq_lens)
    started = time.perf_counter()
    for case in cases:
        failed_shorter = None
        for seq_len in sorted(args.seq_lens):
            if failed_shorter is not None:
                result = {"status": failed_shorter, "message": "skipped: a shorter length already failed"}
            else:
                result = measure_in_subprocess(case, seq_len, args)
                if result["status"] in ("oom", "timeout"):
                    failed_shorter = result["status"]
            record = {
                "label": case.label,
                "variant": case.variant,
                "impl": case.impl,
                "causal": case.causal,
                "seq_len": seq_len,
                "batch": args.batch,
                "heads": args.heads,
                "dim_head": args.dim_head,
                "hparams": case.hparams,
            } | result
            records.append(record)
            with args.out.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            elapsed = time.perf_counter() - started
            detail = f"{result.get('fwd_bwd_ms', 0):.1f} ms" if result["status"] == "ok" else result["status"]
            print(
                f"[{len(records)}/{total} {elapsed:.0f}s] {case.label} n={seq_len}: {detail}",
                file=sys.stderr,
                flush=True,
            )
    print(summarize(records, args.seq_lens))
    return records


if __name__ == "__main__":
    main()
