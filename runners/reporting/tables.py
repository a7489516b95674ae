"""The report's speed tables: one row per point, failed points labelled, LRA-relative, scaling, summary."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from runners.reporting.styles import CAUSAL, REFERENCE, variant_order
from runners.results import store

COLUMNS = {
    "variant": "variant",
    "hardware": "hardware",
    "hardware_info.fingerprint": "fingerprint",
    "probe": "probe",
    "task": "task",
    "direction": "direction",
    "seq_len": "seq_len",
    "seed": "seed",
    "lr": "lr",
    "status": "status",
    "message": "message",
    "sweep_id": "sweep_id",
    "train_tokens_per_s": "train_tokens_per_s",
    "infer_tokens_per_s": "infer_tokens_per_s",
    "config.batch_size": "batch_size",
    "config.causal": "causal",
    "peak_memory_mib": "peak_memory_mib",
    "state_memory_mib": "state_memory_mib",
    "step_memory_mib": "step_memory_mib",
    "process_peak_mib": "process_peak_mib",
    "memory_method": "memory_method",  # what peak_memory_mib counts (runners/measure/memory.py); older: resident set
    "step_resident_mib": "step_resident_mib",  # CPU: the resident set's growth over the same step
    "flops_per_step": "flops_per_step",
    "config.hardware.precision": "precision",
    "hardware_info.matmul_gflops.fp32": "matmul_fp32_gflops",
    "hardware_info.matmul_gflops.bf16": "matmul_bf16_gflops",
    "hardware_info.bf16_native": "bf16_native",
    "hardware_info.gpu_name": "gpu_name",
    "params": "params",
    # timed in interleaved rounds (runners/sweeping/rounds.py): the median's interval and the paired ratio to full
    "rounds": "rounds",
    "interval_coverage": "interval_coverage",
    "ratio_reference": "ratio_reference",
    "unstable": "unstable",
    "unstable_why": "unstable_why",
    "partial_rounds": "partial_rounds",  # an interrupted sweep: fewer rounds than planned; a resume times it again
    "train_tokens_per_s_lo": "train_tokens_per_s_lo",
    "train_tokens_per_s_hi": "train_tokens_per_s_hi",
    "train_tokens_per_s_ratio": "train_tokens_per_s_ratio",
    "train_tokens_per_s_ratio_lo": "train_tokens_per_s_ratio_lo",
    "train_tokens_per_s_ratio_hi": "train_tokens_per_s_ratio_hi",
    "infer_tokens_per_s_lo": "infer_tokens_per_s_lo",
    "infer_tokens_per_s_hi": "infer_tokens_per_s_hi",
    "infer_tokens_per_s_ratio": "infer_tokens_per_s_ratio",
    "infer_tokens_per_s_ratio_lo": "infer_tokens_per_s_ratio_lo",
    "infer_tokens_per_s_ratio_hi": "infer_tokens_per_s_ratio_hi",
    "decode_tokens_per_s_lo": "decode_tokens_per_s_lo",
    "decode_tokens_per_s_hi": "decode_tokens_per_s_hi",
    "decode_tokens_per_s_ratio": "decode_tokens_per_s_ratio",
    "decode_tokens_per_s_ratio_lo": "decode_tokens_per_s_ratio_lo",
    "decode_tokens_per_s_ratio_hi": "decode_tokens_per_s_ratio_hi",
    "hardware_info.machine.microarch": "microarch",
    "hardware_info.cpu_model": "cpu_model",
    "decode_tokens_per_s": "decode_tokens_per_s",
    "decode_ms": "decode_ms",
    "state_bytes": "state_bytes",  # decode points, and accuracy runs of decoding variants: the state after n tokens
    "cross_state_bytes": "cross_state_bytes",  # cross points and seq2seq runs: the source's state in every layer
    "config.target_len": "target_len",  # cross speed points: the decoder's length (seq_len is the source's)
    "config.self_attention.name": "self_attention",  # cross points: every self-attention of the encoder-decoder
    "test_exact_match": "test_exact_match",  # seq2seq runs: whole target right by greedy generation
    "config.state_knob": "state_knob",  # accuracy runs of sweep.state_sizes: the knob that set the state
    "config.task.num_pairs": "num_pairs",
    "prefill_ms": "prefill_ms",
    "test_acc": "test_acc",
    "val_acc": "val_acc",
    "steps": "steps",
    "max_steps": "max_steps",
    "target_acc": "target_acc",
    "stopped_at_target": "stopped_at_target",
    "concurrent_runs": "concurrent_runs",
    "world_size": "world_size",
    "train_tokens_per_s_total": "train_tokens_per_s_total",
    "train_tokens_per_s_per_device": "train_tokens_per_s_per_device",
    "majority_baseline": "majority_baseline",
    # language modelling on text (tasks/text.py): bits per byte overall, per kind of byte and per position
    "test_bpb": "test_bpb",
    "test_bpb_far": "test_bpb_far",
    "test_bpb_near": "test_bpb_near",
    "test_bpb_other": "test_bpb_other",
    **{f"test_bpb_pos{i}": f"test_bpb_pos{i}" for i in range(8)},
    "in_context_gain_bits": "in_context_gain_bits",
    "unigram_entropy_bits": "unigram_entropy_bits",
    "test_share_far": "test_share_far",
    "test_share_near": "test_share_near",
    "recall_ngram": "recall_ngram",
    "recall_far": "recall_far",
    "train_peak_memory_mib": "train_peak_memory_mib",
    "train_peak_memory_kind": "train_peak_memory_kind",
    "config.data.corpus": "corpus",
    "config.data.corpus_digest": "corpus_digest",
    "config.data.corpus_files": "corpus_files",
    "config.data.corpus_bytes": "corpus_bytes",
    "config.model.layers": "model_layers",
    "config.model.dim": "model_dim",
    "config.task.batch_size": "task_batch_size",
    "learning_curve": "learning_curve",  # a list per accuracy run; JSON text in results.csv
    "errors": "errors",  # maps probe: a list of rows per point (one per input case); JSON text in results.csv
    "budget_curve": "budget_curve",  # maps probe: a list of rows; JSON text in results.csv
    "heatmaps": "heatmaps",  # maps probe: pooled attention maps; left out of results.csv (megabytes)
}


NESTED = ("learning_curve", "errors", "budget_curve", "heatmaps")  # lists per point
NESTED_IN_CSV = ("learning_curve", "errors", "budget_curve")  # kept in results.csv as JSON text: a report rebuilt
# from it has its time to accuracy, learning curves and error tables; the heatmaps are too large to keep


def to_csv(frame: pd.DataFrame, path: Path) -> None:
    """``results.csv``: the flat table, the small nested lists as JSON text, the heatmaps left out."""
    flat = frame.drop(columns=[c for c in NESTED if c not in NESTED_IN_CSV], errors="ignore").copy()
    for column in NESTED_IN_CSV:
        if column in flat:
            flat[column] = [json.dumps(v, default=str) if isinstance(v, list) and v else "" for v in flat[column]]
    flat.to_csv(path, index=False)


def latest_per_point(records: list[dict]) -> list[dict]:
    """One record per point key, the last to finish: a point measured twice (``force=true``, or a baseline
    measured by two parallel jobs of a multirun) counts once, so a re-run never passes for another seed."""
    latest: dict[str, dict] = {}
    unkeyed = []
    for record in sorted(records, key=lambda r: str(r.get("finished_at") or "")):
        if record.get("key") is None:
            unkeyed.append(record)
        else:
            latest[record["key"]] = record
    return [*latest.values(), *unkeyed]


def flat_results(records: list[dict]) -> pd.DataFrame:
    """One row per point (the latest record of each) with the columns the report uses."""
    records = latest_per_point(records)
    frame = pd.json_normalize(records) if records else pd.DataFrame()
    for column in COLUMNS:
        if column not in frame.columns:
            frame[column] = np.nan
    frame = frame[list(COLUMNS)].rename(columns=COLUMNS)
    frame["hparams"] = [hparams_label(record.get("hparams")) for record in records]
    frame["fingerprint"] = frame["fingerprint"].fillna(frame["hardware"])
    causal_speed = (frame.probe == "speed") & frame.causal.eq(True)
    frame.loc[causal_speed, "variant"] = frame.loc[causal_speed, "variant"] + CAUSAL  # its own row in every table
    return frame.sort_values(["fingerprint", "probe", "variant", "seq_len"]).reset_index(drop=True)


def hparams_label(hparams: dict | None) -> str:
    """A variant's hyperparameters in a table cell: 'k=16, share_kv=False' ('' for none)."""
    return ", ".join(f"{key}={value}" for key, value in sorted((hparams or {}).items()))


def load_results(path: Path) -> pd.DataFrame:
    """The flat table of a results store (a folder with ``points/``), of a report folder (its ``results.csv``)
    or of a ``results.csv`` itself: so a committed example report can be read again without its store."""
    path = Path(path)
    if (path / "points").is_dir():
        return flat_results(store.read_records(path))
    csv = path / "results.csv" if path.is_dir() else path
    if csv.suffix != ".csv" or not csv.is_file():
        raise FileNotFoundError(
            f"{path}: neither a results store (a folder with points/) nor a report folder with results.csv "
            "nor a results.csv file"
        )
    frame = pd.read_csv(csv, low_memory=False)
    for column in COLUMNS.values():
        if column in NESTED and column in frame:  # JSON text (an empty cell: none recorded)
            frame[column] = [json.loads(v) if isinstance(v, str) and v else [] for v in frame[column]]
        elif column in NESTED:  # the heatmaps, or a results.csv written before the lists were kept
            frame[column] = [[] for _ in range(len(frame))]
        elif column not in frame.columns:
            frame[column] = np.nan
    frame["hparams"] = frame["hparams"].astype(object).fillna("") if "hparams" in frame else ""
    return frame


def status_label(row: pd.Series) -> str:
    """What a failed point shows in a table cell."""
    status, message = row["status"], str(row.get("message") or "")
    if status == "oom":
        return "OOM"
    if status == "unsupported":
        return "n/a: causal unsupported" if "causal" in message else "n/a: unsupported"
    return str(status)


def training_run_cells(accuracy: pd.DataFrame) -> pd.Series:
    """'total (per device x N), steps' for each training run; blank where a run recorded no throughput."""

    def cell(row: pd.Series) -> str:
        if pd.isna(row.train_tokens_per_s_total):
            return ""
        world = int(row.world_size) if pd.notna(row.world_size) else 1
        steps = f", {int(row.steps)} steps" if pd.notna(row.steps) else ""
        return f"{row.train_tokens_per_s_total:,.0f} ({row.train_tokens_per_s_per_device:,.0f} x {world}){steps}"

    return accuracy.apply(cell, axis=1) if not accuracy.empty else pd.Series(dtype=str)


def cell_table(frame: pd.DataFrame, value: str, fmt: str) -> pd.DataFrame:
    """variant x seq_len table of ``value``, failed points shown by their status."""
    if frame.empty:
        return pd.DataFrame()
    cells = frame.apply(lambda r: format(r[value], fmt) if r["status"] == "ok" else status_label(r), axis=1)
    table = frame.assign(cell=cells).pivot_table(index="variant", columns="seq_len", values="cell", aggfunc="last")
    return by_variant(table)


def by_variant(table: pd.DataFrame) -> pd.DataFrame:
    """A table indexed by variant in the report's order: ``full`` first, then family by family."""
    return table.reindex(variant_order(table.index)) if not table.empty else table


def relative_table(speed: pd.DataFrame, value: str) -> pd.DataFrame:
    """LRA-style: each variant's ``value`` relative to full's at the same length and direction.

    Where the point was timed in rounds beside ``full`` (``{value}_ratio``), the median of the per-round
    ratios: the pairing that makes it reproducible; elsewhere (memory, records from before) the quotient.
    """
    ok = speed[speed.status == "ok"]
    table = ok.pivot_table(index="variant", columns="seq_len", values=value, aggfunc="last")
    parts = []
    for causal in (False, True):
        rows = table[table.index.str.endswith(CAUSAL) == causal]
        reference = REFERENCE + CAUSAL if causal else REFERENCE
        if reference in rows.index:
            parts.append(rows.div(rows.loc[reference], axis=1))
    if not parts:
        return pd.DataFrame()
    quotients = pd.concat(parts)
    paired = paired_table(ok, value, "ratio")
    return by_variant(paired.combine_first(quotients).reindex_like(quotients) if not paired.empty else quotients)


def paired_table(frame: pd.DataFrame, value: str, suffix: str) -> pd.DataFrame:
    """variant x seq_len of the ``{value}_{suffix}`` column where the records have it (empty where none does)."""
    column = f"{value}_{suffix}"
    if column not in frame or frame[column].isna().all():
        return pd.DataFrame()
    return frame.dropna(subset=[column]).pivot_table(index="variant", columns="seq_len", values=column, aggfunc="last")


def interval_cells(frame: pd.DataFrame, value: str, *, ratio: bool, fmt: str) -> pd.DataFrame:
    """variant x seq_len cells 'median (lo-hi)' of a timed ``value`` or of its paired ratio to ``full``.

    Records without an interval (measured alone, or before rounds existed) show the bare number;
    an unstable point (interval still wider than ``sweep.timing.max_spread``) is marked ``unstable``.
    """
    ok = frame[frame.status == "ok"]
    if ok.empty:
        return pd.DataFrame()
    base = f"{value}_ratio" if ratio else value
    if ratio:
        numbers = relative_table(frame, value)
        if numbers.empty:
            return numbers
    else:
        numbers = ok.pivot_table(index="variant", columns="seq_len", values=value, aggfunc="last")
    lo, hi = paired_table(ok, base, "lo"), paired_table(ok, base, "hi")
    flags = None
    if "unstable" in ok:
        flags = ok.assign(flag=ok["unstable"].astype(object).fillna(False).astype(bool))

    def cell(variant: str, seq_len: int) -> str:
        number = numbers.at[variant, seq_len] if seq_len in numbers.columns else np.nan
        if pd.isna(number):
            return ""
        text = format(number, fmt)
        if not lo.empty and variant in lo.index and seq_len in lo.columns and pd.notna(lo.at[variant, seq_len]):
            low, high = lo.at[variant, seq_len], hi.at[variant, seq_len]
            if not (ratio and variant.removesuffix(CAUSAL) == REFERENCE):
                text += f" ({format(low, fmt)}-{format(high, fmt)})"
        if flags is not None:
            rows = flags[(flags.variant == variant) & (flags.seq_len == seq_len)]
            if not rows.empty and bool(rows.flag.iloc[-1]):
                text += " unstable"
        return text

    cells = pd.DataFrame(
        {n: [cell(v, n) for v in numbers.index] for n in numbers.columns}, index=numbers.index
    ).rename_axis(index="variant", columns="seq_len")
    return by_variant(cells)


def achieved_gflops(speed: pd.DataFrame) -> pd.DataFrame:
    """``speed`` with ``step_s`` (one training step), ``train_gflops`` (counted matmul FLOPs per step / step time),
    ``peak_gflops`` and ``pct_of_peak``.

    The peak is the machine's measured matmul rate in the dtype the precision
    computes in (bf16 for ``bf16-mixed``, else fp32), from the hardware
    fingerprint; NaN where a record predates the peak probe.
    """
    out = speed.copy()
    out["step_s"] = out.seq_len * out.batch_size.fillna(1) / out.train_tokens_per_s
    out["train_gflops"] = out.flops_per_step / out.step_s / 1e9
    in_bf16 = out.precision.astype(str).str.startswith("bf16")
    out["peak_gflops"] = out.matmul_bf16_gflops.where(in_bf16, out.matmul_fp32_gflops)
    out["pct_of_peak"] = 100 * out.train_gflops / out.peak_gflops
    return out


def flop_bound(speed: pd.DataFrame) -> pd.DataFrame:
    """Can a variant beat ``full`` here at all? Per variant and length: the share of this machine's measured matmul
    peak its training step would need, by its own FLOP count, to take as long as ``full``'s measured step
    (``needed_pct``; above 100: it cannot, however good its kernel), beside the share it achieves
    (``achieved_pct``). Rows: ``variant``, ``seq_len``, ``needed_pct``, ``achieved_pct``, ``ratio`` (speed vs full).
    """
    ok = achieved_gflops(speed[(speed.status == "ok") & speed.flops_per_step.notna()])
    if ok.empty or ok.pct_of_peak.isna().all():
        return pd.DataFrame(columns=["variant", "seq_len", "needed_pct", "achieved_pct", "ratio"])
    reference = {
        (row.seq_len, row.variant.endswith(CAUSAL)): row.step_s
        for row in ok[ok.variant.isin([REFERENCE, REFERENCE + CAUSAL])].itertuples()
    }
    ratio = relative_table(speed, "train_tokens_per_s")
    rows = []
    for row in ok.itertuples():
        full_s = reference.get((row.seq_len, row.variant.endswith(CAUSAL)))
        if full_s is None or row.variant.removesuffix(CAUSAL) == REFERENCE:
            continue
        needed = 100 * row.flops_per_step / (row.peak_gflops * 1e9) / full_s
        measured = ratio.loc[row.variant, row.seq_len] if row.variant in ratio.index else math.nan
        rows.append((row.variant, row.seq_len, needed, row.pct_of_peak, measured))
    return pd.DataFrame(rows, columns=["variant", "seq_len", "needed_pct", "achieved_pct", "ratio"])


def scaling_exponent(seq_lens: pd.Series, values: pd.Series) -> float:
    """Slope of log(value) against log(n): 1 = linear, 2 = quadratic."""
    mask = values.notna() & (values > 0)
    if mask.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(seq_lens[mask].astype(float)), np.log(values[mask].astype(float)), 1)[0])


SCALED = {
    "peak memory": "peak_memory_mib",
    "step memory": "step_memory_mib",
    "train step time": "train_step_s",
    "inference time": "infer_step_s",
    "FLOPs": "flops_per_step",
}


def scaling_table(speed: pd.DataFrame) -> pd.DataFrame:
    """Per variant, the fitted exponent p of n^p for memory, time and FLOPs over the measured lengths.

    Times per step come from throughput (tokens per step / tokens per second),
    so a variant whose throughput holds steady scales as n^1.
    """
    ok = speed[speed.status == "ok"].copy()
    tokens = ok.seq_len * ok.batch_size.fillna(1)
    ok["train_step_s"] = tokens / ok.train_tokens_per_s
    ok["infer_step_s"] = tokens / ok.infer_tokens_per_s
    rows = {}
    for variant, group in ok.groupby("variant"):
        if group.seq_len.nunique() < 2:
            continue
        row = {"lengths": f"{group.seq_len.min()}-{group.seq_len.max()}"}
        for label, column in SCALED.items():
            row[label] = scaling_exponent(group.seq_len, group[column])
        rows[variant] = row
    return by_variant(pd.DataFrame.from_dict(rows, orient="index").rename_axis("variant"))


def pareto_front(points: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Points not beaten on both ``x`` and ``y`` (higher is better for both)."""
    ordered = points.sort_values(x, ascending=False)
    front, best = [], -math.inf
    for _, row in ordered.iterrows():
        if row[y] > best:
            front.append(row)
            best = row[y]
    return pd.DataFrame(front)


def speed_summary(speed: pd.DataFrame) -> pd.DataFrame:
    """Per sequence length: the fastest and the leanest variant (accuracy has its own summary)."""
    ok = speed[speed.status == "ok"]
    rows = []
    for seq_len, group in ok.groupby("seq_len"):
        fastest = group.loc[group.train_tokens_per_s.idxmax()]
        leanest = group.loc[group.peak_memory_mib.idxmin()]
        rows.append(
            {
                "seq_len": seq_len,
                "fastest (train tok/s)": f"{fastest.variant} ({fastest.train_tokens_per_s:,.0f})",
                "leanest (peak MiB)": f"{leanest.variant} ({leanest.peak_memory_mib:,.0f})",
            }
        )
    return pd.DataFrame(rows, columns=None if rows else ["seq_len"]).set_index("seq_len")
