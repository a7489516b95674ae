"""Attention-core benchmark: time and peak memory of every variant, side by side with peers.

    python -m runners.bench                       # every variant, n = 256 ... 8192, CPU
    python -m runners.bench --peers               # + the public reference packages (".[peers]")
    python -m runners.bench --variants local performer --seq-lens 1024 4096
    python -m runners.bench --dtype bf16          # cores in bf16 (parameters stay fp32)
    python -m runners.bench --profile --variants retention --seq-lens 2048   # where the time goes

Only the mixing core is measured (no projections): q, k, v of shape
``(batch, heads, n, dim_head)``, by :func:`runners.measure.core_probe.core_probe`.
Each point runs through the sweep's worker protocol
(:mod:`runners.measure.worker`): timing and memory each in a process of its own, so
one point's memory cannot hide in another's, and an out-of-memory kill or a
timeout is recorded as that point's status while the benchmark goes on. Per
point: forward time (no graph), forward+backward time (median of repeats after
warm-up), the peak memory of one forward+backward step (see
:mod:`runners.measure.memory`) and the achieved matmul GFLOP/s of the step
(:mod:`runners.measure.flops`) as a share of the machine's measured matmul
peak in the same dtype (:mod:`runners.measure.matmul_peak`, measured first
with the same threads and kept in every record's ``hardware``). Every finished
point is appended to a JSON-lines file. ``--profile`` measures nothing of the
above: it prints each core's top operators and achieved GFLOP/s against the
peak instead (:mod:`runners.measure.core_profile`).
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

import variants
from runners.measure.bf16 import EmulatedBF16Error, check_bf16
from runners.measure.core_probe import OURS
from runners.measure.core_profile import format_profile
from runners.measure.failures import PointFailed
from runners.measure.matmul_peak import DTYPES, describe_peak
from runners.measure.peers import PEERS
from runners.measure.worker import run_isolated
from runners.reporting.crossover import crossover_table
from runners.reporting.styles import CAUSAL
from runners.sweeping import rounds
from runners.sweeping.execute import TimedCall
from runners.sweeping.plan import TimingSettings

CORE_PROBE = "runners.measure.core_probe:core_probe"
CORE_PROFILE = "runners.measure.core_profile:profile_core"
FINGERPRINT = "runners.results.context:hardware_fingerprint"
DEFAULT_SEQ_LENS = [256, 512, 1024, 2048, 4096, 8192]


@dataclass(frozen=True)
class Case:
    """One benchmark line: an implementation in one direction, over all lengths."""

    variant: str
    causal: bool
    impl: str = OURS  # or the peer's package name
    hparams: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        direction = "causal" if self.causal else "bidir"
        who = "" if self.impl == OURS else f" [{self.impl}]"
        return f"{self.variant}{who} ({direction})"


def measure_length(cases: list[Case], seq_len: int, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Every case at one length, timed in interleaved rounds (:mod:`runners.sweeping.rounds`), so the ratios
    to ``full`` of the same direction are paired per round; memory once per case. Failures are statuses."""
    members = []
    for case in cases:
        kwargs = asdict(case) | {
            "seq_len": seq_len,
            "batch": args.batch,
            "heads": args.heads,
            "dim_head": args.dim_head,
            "repeats": args.repeats,
            "min_time_s": args.min_time_s,
            "dtype": args.dtype,
        }
        call = TimedCall(CORE_PROBE, kwargs, args.threads, args.timeout, memory=True)
        # full's peers do not exist, so the one member named full is ours: the reference
        point = {"probe": "core", "attention": {"name": case.variant if case.impl == OURS else case.label}}
        members.append(rounds.Member(case.label, point, write=True, call=call))
    comparisons = [
        rounds.Comparison([m for m, case in zip(members, cases, strict=True) if case.causal == causal])
        for causal in sorted({case.causal for case in cases})
    ]
    settings = TimingSettings(args.rounds, args.max_rounds, 0.1)
    rounds.measure_in_rounds(None, comparisons, settings)  # the directions' rounds interleaved too
    by_direction = {key: result for c in comparisons for key, result in c.results(settings).items()}
    results = {}
    for case in cases:
        result = by_direction[case.label]
        if result["status"] == "ok" and "fwd_bwd_flops" in result:
            result["fwd_bwd_gflops_per_s"] = result["fwd_bwd_flops"] / result["fwd_bwd_ms"] * 1e3 / 1e9
        result.pop("traceback", None)
        results[case.label] = result
    return results


def build_cases(names: list[str], *, with_peers: bool) -> list[Case]:
    cases = []
    for name in names:
        hparams = variants.hyperparameters(name)  # the variant's own defaults; the peer is given the same
        directions = [False, True] if variants.get(name).supports_causal else [False]
        for causal in directions:
            cases.append(Case(name, causal, OURS, hparams))
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


def hardware(args: argparse.Namespace) -> dict[str, Any]:
    """The fingerprint with its matmul peak, measured in a fresh process with the points' threads."""
    return run_isolated(FINGERPRINT, {"accelerator": "cpu"}, threads=args.threads, timeout_s=120)


CORE_METRICS = {
    "faster forward from n =": ("fwd_ms", True),
    "faster forward+backward from n =": ("fwd_bwd_ms", True),
    "leaner from n =": ("peak_mib", True),
}


def core_crossovers(frame: pd.DataFrame) -> pd.DataFrame:
    """Our cores' crossover lengths with ``full`` (:mod:`runners.reporting.crossover`), per direction."""
    ours = frame[frame.impl == OURS]
    if ours.empty:
        return pd.DataFrame()
    rows = ours.assign(variant=ours.variant + ours.causal.map({True: CAUSAL, False: ""}))
    return crossover_table(rows, CORE_METRICS)


def summarize(records: list[dict[str, Any]], seq_lens: list[int]) -> str:
    """Tables: time, memory, achieved GFLOP/s per case and n, growth per doubling, ratio to peer."""
    frame = pd.DataFrame(records)
    frame["cell"] = frame.apply(
        lambda r: r["status"] if r["status"] != "ok" else f"{r['fwd_ms']:.1f}/{r['fwd_bwd_ms']:.1f}", axis=1
    )
    ok = frame[frame.status == "ok"]
    out = ["time per call, ms: forward/forward+backward"]
    out.append(frame.pivot(index="label", columns="seq_len", values="cell").to_string())
    if "fwd_bwd_ms_ratio" in ok and ok.fwd_bwd_ms_ratio.notna().any():
        paired = ok.dropna(subset=["fwd_bwd_ms_ratio"])
        paired = paired.assign(
            cell=paired.apply(
                lambda r: f"{r.fwd_bwd_ms_ratio:.2f} ({r.fwd_bwd_ms_ratio_lo:.2f}-{r.fwd_bwd_ms_ratio_hi:.2f})", axis=1
            )
        )
        out.append(
            "\nforward+backward time / full's in the same direction: each round's process times the core and "
            "full's call by call in turn, median of those ratios; median over the rounds (distribution-free "
            "interval over the rounds); below 1 is faster"
        )
        out.append(paired.pivot(index="label", columns="seq_len", values="cell").to_string())
    out.append("\npeak memory of one forward+backward step, MiB")
    mem = frame.assign(
        mem=frame.apply(lambda r: f"{r['peak_mib']:.0f}" if r["status"] == "ok" else r["status"], axis=1)
    )
    out.append(mem.pivot(index="label", columns="seq_len", values="mem").to_string())
    if "floor_mib" in ok and not ok.empty:
        working = ok.assign(working=ok.peak_mib - ok.floor_mib)
        floors = ", ".join(f"{n}: {f:.0f}" for n, f in ok.groupby("seq_len").floor_mib.first().items())
        out.append(
            f"\nworking memory: peak minus the floor every variant pays (output, q/k/v gradients: {floors}), MiB"
        )
        out.append(working.pivot(index="label", columns="seq_len", values="working").round(0).to_string())
    if "fwd_bwd_gflops_per_s" in ok and not ok.empty:
        peak = ok.apply(lambda r: r["hardware"]["matmul_gflops"].get(r["dtype"], float("nan")), axis=1)
        cells = ok.assign(
            gflops=ok.apply(lambda r: f"{r['fwd_bwd_gflops_per_s']:.0f}", axis=1).str.cat(
                (100 * ok.fwd_bwd_gflops_per_s / peak).map(lambda p: f"{p:.0f}%"), sep=" "
            )
        )
        machine = records[0]["hardware"]
        peaks = describe_peak(machine["matmul_gflops"], bf16_native=machine.get("bf16_native"))
        out.append(f"\nachieved matmul GFLOP/s of forward+backward, % of the measured matmul peak ({peaks})")
        out.append(cells.pivot(index="label", columns="seq_len", values="gflops").to_string())
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
                **(
                    {"working memory x/doubling": growth_per_doubling(g.peak_mib - g.floor_mib, lo, hi)}
                    if "floor_mib" in g
                    else {}
                ),
            }
        )
    if growth:
        out.append(f"\ngrowth per doubling of n from {lo} to {hi} (1.0 = constant, 2.0 = linear, 4.0 = quadratic)")
        out.append(pd.DataFrame(growth).set_index("label").round(2).to_string())
    crossovers = core_crossovers(frame)
    if not crossovers.empty:
        out.append("\ncrossover with full in the same direction: from which n the core is faster or leaner")
        out.append(crossovers.to_string())
    peers = ok[ok.impl != OURS]
    if not peers.empty:
        ours = ok[ok.impl == OURS].set_index(["variant", "causal", "seq_len"])
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


def build_parser() -> argparse.ArgumentParser:
    """The command's flags (the docs' command reference is generated from this parser)."""
    parser = argparse.ArgumentParser(prog="python -m runners.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", help="registered names (default: all)")
    parser.add_argument("--seq-lens", nargs="+", type=int, default=DEFAULT_SEQ_LENS, help="sequence lengths")
    parser.add_argument("--batch", type=int, default=4, help="batch size")
    parser.add_argument("--heads", type=int, default=4, help="attention heads")
    parser.add_argument("--dim-head", type=int, default=64, help="width of each head")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per process (their median)")
    parser.add_argument(
        "--min-time-s", type=float, default=0.2, help="timed calls per process add up to at least this (seconds)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="processes per point, interleaved with the others")
    parser.add_argument("--max-rounds", type=int, default=6, help="more rounds while a ratio's interval is >10%%")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per point before it is 'timeout'")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads per point (0: torch's default)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="dtype of q, k, v")
    parser.add_argument(
        "--allow-emulated-bf16",
        action="store_true",
        help="measure --dtype bf16 even where this CPU only emulates it (refused otherwise: ~500x slower)",
    )
    parser.add_argument("--peers", action="store_true", help="also run the reference packages (.[peers])")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="print each core's top operators (torch.profiler) and GFLOP/s against the peak; measures nothing else",
    )
    parser.add_argument("--out", type=Path, default=Path("results/bench.jsonl"), help="JSON lines, appended")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def profile_cases(cases: list[Case], args: argparse.Namespace, *, peak: float | None) -> None:
    """Print every case's profile at every length, each measured in a process of its own."""
    for seq_len in sorted(args.seq_lens):
        for case in cases:
            kwargs = asdict(case) | {"seq_len": seq_len, "batch": args.batch, "heads": args.heads}
            kwargs |= {"dim_head": args.dim_head, "dtype": args.dtype}
            try:
                result = run_isolated(
                    CORE_PROFILE, kwargs, threads=args.threads, timeout_s=args.timeout, malloc="timing"
                )
            except PointFailed as failure:
                print(f"{case.label} n={seq_len}: {failure.status}: {failure}\n", flush=True)
                continue
            print(format_profile(case.label, seq_len, result, peak) + "\n", flush=True)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    try:
        check_bf16(
            args.dtype == "bf16",
            "cpu",
            allow_emulated=args.allow_emulated_bf16,
            fix="--dtype fp32",
            override="--allow-emulated-bf16",
        )
    except EmulatedBF16Error as error:
        raise SystemExit(f"runners.bench: {error}") from None
    if args.rounds < 1 or args.max_rounds < args.rounds:
        raise SystemExit(f"runners.bench: --rounds {args.rounds} must be >= 1 and --max-rounds >= --rounds")
    names = args.variants or variants.names()
    for name in names:
        variants.get(name)  # unknown names fail here, listing the registered ones
    cases = build_cases(names, with_peers=args.peers)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    machine = hardware(args)
    peaks = describe_peak(machine["matmul_gflops"], bf16_native=machine.get("bf16_native"))
    print(f"{machine['fingerprint']}, {args.dtype}; matmul peak: {peaks}", file=sys.stderr)
    if args.profile:
        profile_cases(cases, args, peak=machine["matmul_gflops"].get(args.dtype))
        return []
    records = []
    total = len(cases) * len(args.seq_lens)
    started = time.perf_counter()
    failed_shorter: dict[str, str] = {}  # case label -> the status that ends its longer lengths
    for seq_len in sorted(args.seq_lens):
        live = [case for case in cases if case.label not in failed_shorter]
        measured = measure_length(live, seq_len, args) if live else {}
        for case in cases:
            if case.label in failed_shorter:
                result = {"status": failed_shorter[case.label], "message": "skipped: a shorter length already failed"}
            else:
                result = measured[case.label]
                if result["status"] in ("oom", "timeout"):
                    failed_shorter[case.label] = result["status"]
            record = {
                "label": case.label,
                "variant": case.variant,
                "impl": case.impl,
                "causal": case.causal,
                "seq_len": seq_len,
                "batch": args.batch,
                "heads": args.heads,
                "dim_head": args.dim_head,
                "dtype": args.dtype,
                "hparams": case.hparams,
                "hardware": machine,
            } | result
            records.append(record)
            with args.out.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            elapsed = time.perf_counter() - started
            detail = result["status"]
            if result["status"] == "ok":
                ratio = result.get("fwd_bwd_ms_ratio")
                paired = ""
                if ratio is not None:
                    lo, hi = result["fwd_bwd_ms_ratio_lo"], result["fwd_bwd_ms_ratio_hi"]
                    paired = f", {ratio:.2f}x full ({lo:.2f}-{hi:.2f})"
                detail = f"{result['fwd_bwd_ms']:.1f} ms{paired}, {result['rounds']} rounds"
            print(
                f"[{len(records)}/{total} {elapsed:.0f}s] {case.label} n={seq_len}: {detail}",
                file=sys.stderr,
                flush=True,
            )
    print(summarize(records, args.seq_lens))
    return records


if __name__ == "__main__":
    main()
