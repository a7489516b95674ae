"""Which attention for my constraints? Answered from saved results, without running anything.

    python -m runners.advise --results reports/intel-xeon-2-threads --seq-len 384 --min-accuracy 0.9
    python -m runners.advise --results results/store --seq-len 2048 --max-memory-mib 200 --first memory
    python -m runners.advise --results reports/x/results.csv --seq-len 384 --causal --first accuracy
    python -m runners.advise --results reports/x --seq-len 256 --causal --task text --max-bpb 2.5

For each hardware fingerprint in the results (or the one ``--hardware`` names):
the variants that meet every constraint at ``--seq-len``, ranked by what comes
first for the reader, each with its evidence (measured, interpolated between
two measured lengths or extrapolated from the fitted growth; the seeds of its
accuracy); then every excluded variant with the constraint that rules it out.
Language modelling on text is scored in bits per byte, lower is better
(``--task text``, bounded by ``--max-bpb``); every other task by accuracy.
Accuracy is only taken at the requested length, on the same hardware and in
the same direction, unless ``--accuracy-seq-len`` names another length
explicitly (the answer says so). An impossible request gets that answer.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pandas as pd

from runners.reporting.accuracy import tied_best
from runners.reporting.choice import accuracy_settings, speed_rows, speed_score
from runners.reporting.crossover import value_at
from runners.reporting.styles import variant_order
from runners.reporting.tables import load_results

FIRST = ("accuracy", "memory", "speed")  # what the reader ranks by
FAILED = ("oom", "timeout", "crashed", "diverged")  # a failed speed point at or below the length rules it out


class OneLineParser(argparse.ArgumentParser):
    """Bad arguments get one line that says what is wrong (argparse names the valid choices), not the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"runners.advise: error: {message}\n")


@dataclass(frozen=True)
class Constraints:
    """What the reader asks for."""

    seq_len: int
    causal: bool
    min_accuracy: float | None
    max_memory_mib: float | None
    min_tokens_per_s: float | None
    first: str
    task: str | None
    accuracy_seq_len: int | None
    max_bpb: float | None = None

    def describe(self) -> str:
        bounds = [
            f"accuracy >= {self.min_accuracy:g}" if self.min_accuracy is not None else "",
            f"bits per byte <= {self.max_bpb:g}" if self.max_bpb is not None else "",
            f"peak memory <= {self.max_memory_mib:g} MiB" if self.max_memory_mib is not None else "",
            f"training >= {self.min_tokens_per_s:,.0f} tok/s" if self.min_tokens_per_s is not None else "",
        ]
        return ", ".join(b for b in bounds if b) or "no bounds"


def speed_at(speed: pd.DataFrame, seq_len: int) -> pd.DataFrame:
    """Per variant: training tok/s and peak MiB at ``seq_len`` with how each was obtained, or why not."""
    rows = {}
    for variant, group in speed.groupby("variant", sort=False):
        failed = group[(group.status.isin(FAILED)) & (group.seq_len <= seq_len)]
        if not failed.empty:
            first = failed.sort_values("seq_len").iloc[0]
            rows[variant] = {"speed_problem": f"speed point {first.status} at n={first.seq_len:,}"}
            continue
        ok = group[group.status == "ok"].drop_duplicates("seq_len", keep="last").set_index("seq_len")
        tokens = value_at(ok.train_tokens_per_s.astype(float), seq_len)
        memory = value_at(ok.peak_memory_mib.astype(float), seq_len)
        if tokens is None or memory is None:
            lengths = ", ".join(f"{n:,}" for n in ok.index) or "none"
            rows[variant] = {"speed_problem": f"speed measured at n={lengths} only: nothing to fit"}
            continue
        rows[variant] = {
            "train_tokens_per_s": tokens[0],
            "peak_memory_mib": memory[0],
            "speed_evidence": tokens[1] if tokens[1] == memory[1] else f"tok/s {tokens[1]}, MiB {memory[1]}",
            "vs_full": paired_cell(ok, seq_len),
            "train_tokens_per_s_ratio": ok.at[seq_len, "train_tokens_per_s_ratio"]
            if seq_len in ok.index and "train_tokens_per_s_ratio" in ok
            else None,
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def paired_cell(ok: pd.DataFrame, seq_len: int) -> str:
    """'2.10x (1.90-2.30), 3 rounds': the training ratio to full paired per round, where measured at ``seq_len``."""
    columns = ["train_tokens_per_s_ratio", "train_tokens_per_s_ratio_lo", "train_tokens_per_s_ratio_hi"]
    if seq_len not in ok.index or any(c not in ok for c in columns) or pd.isna(ok.at[seq_len, columns[1]]):
        return ""
    ratio, lo, hi = (float(ok.at[seq_len, c]) for c in columns)
    rounds = (
        f", {int(ok.at[seq_len, 'rounds'])} rounds" if "rounds" in ok and pd.notna(ok.at[seq_len, "rounds"]) else ""
    )
    flag = " unstable" if "unstable" in ok and ok.at[seq_len, "unstable"] == True else ""  # noqa: E712 (NaN: not)
    return f"{ratio:.2f}x ({lo:.2f}-{hi:.2f}){rounds}{flag}"


def accuracy_at(stats: pd.DataFrame, wanted: Constraints, direction: str) -> tuple[pd.DataFrame, str]:
    """Accuracy of each variant at the asked length (or ``--accuracy-seq-len``), and a note on where from."""
    length = wanted.accuracy_seq_len or wanted.seq_len
    mine = stats[stats.direction == direction]
    tasks = sorted(mine[mine.seq_len == length].task.unique())
    if wanted.task is not None:
        tasks = [t for t in tasks if t == wanted.task]
    elif len(tasks) > 1:
        raise SystemExit(
            f"runners.advise: error: several tasks were scored at n={length:,}: choose one with --task "
            f"{{{','.join(tasks)}}}"
        )
    here = mine[(mine.seq_len == length) & mine.task.isin(tasks)].set_index("variant")
    elsewhere = sorted(set(mine.seq_len) - {length})
    if here.empty:
        where = ", ".join(f"{n:,}" for n in elsewhere) or "no length"
        return here, f"no accuracy at n={length:,} ({direction}) on this hardware; it was measured at n={where}"
    borrowed = f" (measured at n={length:,}, asked by --accuracy-seq-len)" if wanted.accuracy_seq_len else ""
    return here, f"accuracy: {tasks[0]} {direction}{borrowed}"


def judge(speed: pd.DataFrame, accuracy: pd.DataFrame, wanted: Constraints, accuracy_note: str) -> pd.DataFrame:
    """Every variant with its numbers, its evidence and the reasons (if any) it is ruled out."""
    score = ["mean", "min", "max", "seeds", "quality", "lower_is_better"]
    table = speed.join(accuracy[score], how="outer") if not accuracy.empty else speed
    reasons = []
    for _, row in table.iterrows():
        why = []
        if pd.notna(row.get("speed_problem")):
            why.append(row.speed_problem)
        elif "train_tokens_per_s" not in row or pd.isna(row.get("train_tokens_per_s")):
            why.append("no speed point in this direction on this hardware")
        else:
            if wanted.max_memory_mib is not None and row.peak_memory_mib > wanted.max_memory_mib:
                why.append(f"peak memory {row.peak_memory_mib:,.1f} MiB > {wanted.max_memory_mib:g}")
            if wanted.min_tokens_per_s is not None and row.train_tokens_per_s < wanted.min_tokens_per_s:
                why.append(f"training {row.train_tokens_per_s:,.0f} tok/s < {wanted.min_tokens_per_s:,.0f}")
        if wanted.min_accuracy is not None or wanted.max_bpb is not None or wanted.first == "accuracy":
            lower = row.get("lower_is_better") == True  # noqa: E712 (NaN: not measured)
            if pd.isna(row.get("mean")):
                why.append(accuracy_note if accuracy.empty else "no accuracy in this setting")
            elif wanted.min_accuracy is not None and lower:
                why.append("--min-accuracy bounds accuracy; this task is scored in bits per byte: use --max-bpb")
            elif wanted.max_bpb is not None and not lower:
                why.append("--max-bpb bounds bits per byte; this task is scored by accuracy: use --min-accuracy")
            elif wanted.min_accuracy is not None and row["mean"] < wanted.min_accuracy:
                why.append(f"accuracy {row['mean']:.3f} < {wanted.min_accuracy:g}")
            elif wanted.max_bpb is not None and row["mean"] > wanted.max_bpb:
                why.append(f"bits per byte {row['mean']:.3f} > {wanted.max_bpb:g}")
        reasons.append("; ".join(why))
    table["ruled_out_by"] = reasons
    return table.reindex(variant_order(table.index))


def ranked(table: pd.DataFrame, first: str) -> pd.DataFrame:
    """The variants that meet every constraint, best first by ``first`` (speed: the paired ratio to full where
    every one has it, else tok/s; see :func:`speed_score`).

    Speed: tok/s; memory: MiB (ties by tok/s); accuracy: the variants tied with the best (seed spreads
    overlapping its own) first, among them the fastest, then the rest by mean accuracy.
    """
    keep = table[table.ruled_out_by == ""]
    keep = keep.assign(speed_score=speed_score(keep)) if not keep.empty else keep.assign(speed_score=[])
    if first == "speed":
        return keep.sort_values("speed_score", ascending=False)
    if first == "memory":
        return keep.sort_values(["peak_memory_mib", "speed_score"], ascending=[True, False])
    tied = keep.index.isin(accuracy_ties(keep))
    lower = bool((keep.get("lower_is_better") == True).any())  # noqa: E712 (bits per byte: the lowest is best)
    return pd.concat(
        [
            keep[tied].sort_values("speed_score", ascending=False),
            keep[~tied].sort_values(["mean", "speed_score"], ascending=[lower, False]),
        ]
    )


def accuracy_ties(table: pd.DataFrame) -> list[str]:
    """The variants tied with the most accurate one (the report's rule, :func:`tied_best`)."""
    return tied_best(table.rename_axis("variant").reset_index()) if not table.empty else []


def accuracy_cell(row: pd.Series) -> str:
    if "mean" not in row or pd.isna(row.get("mean")):
        return "not measured here"
    unit = " bpb" if row.get("lower_is_better") == True else ""  # noqa: E712 (NaN: accuracy)
    return f"{row['mean']:.3f}{unit} ({row['min']:.3f}-{row['max']:.3f}, {row.seeds:.0f} seeds)"


def answer(frame: pd.DataFrame, fingerprint: str, wanted: Constraints) -> tuple[list[str], pd.DataFrame]:
    """The lines printed for one fingerprint, and the ranked variants."""
    supported = frame[frame.status != "unsupported"]
    part = supported[supported.fingerprint == fingerprint]
    direction = "causal" if wanted.causal else "bidirectional"
    speed = speed_rows(part, only_ok=False)
    speed = speed[speed.direction == direction]
    accuracy, note = accuracy_at(accuracy_settings(supported), wanted, direction)  # any machine's: the config's
    table = judge(speed_at(speed, wanted.seq_len), accuracy, wanted, note)
    best = ranked(table, wanted.first)
    head = f"n={wanted.seq_len:,}, {direction}, on {fingerprint}; {wanted.describe()}; {note}"
    lines = [head]
    if best.empty:
        lines.append(f"No variant meets every constraint ({len(table)} considered).")
        if accuracy.empty and (wanted.min_accuracy is not None or wanted.max_bpb is not None):
            lines.append("To judge by accuracy measured at another length, add --accuracy-seq-len N (said so).")
    else:
        lines.append(f"{len(best)} of {len(table)} variants meet every constraint, best first by {wanted.first}:")
        ties = tie_note(best, wanted.first)
        shown = pd.DataFrame(
            {
                "train tok/s": best.train_tokens_per_s.map("{:,.0f}".format),
                "peak MiB": best.peak_memory_mib.map("{:,.1f}".format),
                "accuracy": best.apply(accuracy_cell, axis=1),
                "speed and memory": best.speed_evidence,
                "train vs full, paired": best.vs_full.fillna("") if "vs_full" in best else "",
            }
        )
        shown.index = [f"{rank}. {name}" for rank, name in enumerate(best.index, start=1)]
        lines += [shown.to_string(), *([ties] if ties else [])]
    out = table[table.ruled_out_by != ""]
    if not out.empty:
        lines.append("Ruled out:")
        lines += [f"  {variant}: {row.ruled_out_by}" for variant, row in out.iterrows()]
    return lines, best


def tie_note(best: pd.DataFrame, first: str) -> str:
    """Where accuracy comes first: the variants whose seed spread reaches the top one's are a tie."""
    if first != "accuracy":
        return ""
    ties = set(accuracy_ties(best))
    tied = [name for name in best.index if name in ties]  # in ranked order
    if len(tied) < 2:
        return ""
    return f"Tied on accuracy within the seed spread: {', '.join(tied)} (ranked by training speed)."


def build_parser() -> OneLineParser:
    """The command's flags (the docs' command reference is generated from this parser)."""
    parser = OneLineParser(prog="python -m runners.advise", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, required=True, help="a results store, report folder or results.csv")
    parser.add_argument("--seq-len", type=int, required=True, help="your sequence length")
    parser.add_argument("--causal", action="store_true", help="causal attention (default: bidirectional)")
    parser.add_argument("--min-accuracy", type=float, help="lowest acceptable mean test accuracy, 0-1")
    parser.add_argument("--max-bpb", type=float, help="highest acceptable bits per byte (--task text)")
    parser.add_argument("--max-memory-mib", type=float, help="highest acceptable peak memory of a training step")
    parser.add_argument("--min-tokens-per-s", type=float, help="lowest acceptable training throughput")
    parser.add_argument("--first", choices=FIRST, default="speed", help="what to rank by")
    parser.add_argument("--task", help="the accuracy task, where several were scored at the length")
    parser.add_argument("--hardware", help="a hardware fingerprint (or part of one) in the results")
    parser.add_argument("--accuracy-seq-len", type=int, help="take accuracy measured at this length instead")
    return parser


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Constraints]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.seq_len < 1 or (args.accuracy_seq_len is not None and args.accuracy_seq_len < 1):
        parser.error(f"--seq-len and --accuracy-seq-len must be positive integers; got {args.seq_len}")
    if args.min_accuracy is not None and not 0.0 <= args.min_accuracy <= 1.0:
        parser.error(f"--min-accuracy is a fraction between 0 and 1; got {args.min_accuracy}")
    for name in ("max_memory_mib", "min_tokens_per_s", "max_bpb"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive; got {getattr(args, name)}")
    wanted = Constraints(
        seq_len=args.seq_len,
        causal=args.causal,
        min_accuracy=args.min_accuracy,
        max_memory_mib=args.max_memory_mib,
        min_tokens_per_s=args.min_tokens_per_s,
        first=args.first,
        task=args.task,
        accuracy_seq_len=args.accuracy_seq_len,
        max_bpb=args.max_bpb,
    )
    return args, wanted


def main(argv: list[str] | None = None) -> dict[str, pd.DataFrame]:
    """Print the answer for every matching fingerprint; return the ranked variants per fingerprint."""
    args, wanted = parse_args(argv)
    try:
        frame = load_results(args.results)
    except FileNotFoundError as missing:
        raise SystemExit(f"runners.advise: error: {missing}") from None
    timed = frame[frame.probe == "speed"].fingerprint.dropna()  # a machine that only trained has no answer of its own
    fingerprints = sorted((timed if not timed.empty else frame.fingerprint.dropna()).unique())
    if args.hardware:
        fingerprints = [f for f in fingerprints if args.hardware.lower() in f.lower()]
        if not fingerprints:
            known = "; ".join(sorted(frame.fingerprint.dropna().unique())) or "none"
            raise SystemExit(
                f"runners.advise: error: no hardware matches --hardware {args.hardware!r}; in the results: {known}"
            )
    tasks = sorted(frame[frame.probe == "accuracy"].task.dropna().unique())
    if wanted.task is not None and wanted.task not in tasks:
        raise SystemExit(
            f"runners.advise: error: --task {wanted.task!r} was not scored; in the results: "
            f"{', '.join(tasks) or 'none'}"
        )
    answers = {}
    for fingerprint in fingerprints:
        lines, best = answer(frame, fingerprint, wanted)
        print("\n".join(lines) + "\n")
        answers[fingerprint] = best
    sys.stdout.flush()
    return answers


if __name__ == "__main__":
    main()
