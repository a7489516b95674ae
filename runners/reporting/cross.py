"""The report's "Cross-attention" section: the encoder-decoder, where only the cross-attention is the variant.

CAB (Zhang et al. 2023) separates four patterns; this section is the fourth,
non-causal cross: queries from the decoder's N tokens over the encoder's
output of M tokens, every self-attention fixed (``sweep.cross.self_attention``).
It opens with its answer (which variant is most accurate on the
sequence-to-sequence task, fastest, leanest and smallest in its cross state
at the longest source), then the tables: accuracy over seeds (a property of
the config), then per hardware fingerprint the training step against the
source's length and one decoded token over a source of M with the cross
state's bytes (measurements of that hardware; bytes are a property of the config).
"""

from __future__ import annotations

import pandas as pd

from runners.reporting import accuracy as acc_tables
from runners.reporting.approximation import error_pivot, error_table
from runners.reporting.crossover import crossover_table
from runners.reporting.md import folded, md_table
from runners.reporting.styles import REFERENCE, variant_order
from runners.reporting.tables import by_variant, cell_table, relative_table

CROSS_PROBES = ("cross_speed", "cross_decode", "cross_accuracy")
CROSS_CASE = "random cross"  # the maps probe's rectangular case (runners.approximation.probe.CASES)


def exact_match_cells(runs: pd.DataFrame) -> pd.Series:
    """Per variant: mean whole-sequence exact match over seeds with its min-max."""
    ok = runs[runs.status == "ok"]
    stats = ok.groupby("variant").test_exact_match.agg(["mean", "min", "max"])
    return stats.apply(lambda r: f"{r['mean']:.3f} ({r['min']:.3f}-{r['max']:.3f})", axis=1)


def hparams_cells(runs: pd.DataFrame) -> pd.Series:
    """Per variant: the hyperparameters its runs used ('k=16, share_kv=False')."""
    return runs.groupby("variant").hparams.first().fillna("")


def accuracy_table(runs: pd.DataFrame) -> pd.DataFrame:
    """variant rows of one seq2seq setting: per-token and exact-match accuracy, steps, cross state."""
    chosen = acc_tables.at_chosen_lr(runs)  # with sweep.lrs: each variant's runs at its best rate
    table = acc_tables.accuracy_table(acc_tables.accuracy_stats(chosen))
    table = table.rename(columns={c: f"per token, {c}" for c in table.columns if str(c).startswith("n=")})
    table["exact match (greedy)"] = exact_match_cells(chosen)
    kib = chosen[chosen.status == "ok"].groupby("variant").cross_state_bytes.max() / 1024
    table["cross state, KiB"] = kib.map(lambda v: f"{v:,.1f}")
    table["hyperparameters"] = hparams_cells(chosen)
    return by_variant(table)


def answer_lines(part: pd.DataFrame) -> list[str]:
    """The section's first lines: who wins on accuracy, and at the longest source on speed, memory, state."""
    lines = []
    runs = part[(part.probe == "cross_accuracy") & (part.status != "unsupported")]
    for (task, seq_len), group in runs.groupby(["task", "seq_len"], sort=True):
        stats = acc_tables.accuracy_stats(acc_tables.at_chosen_lr(group))
        tied = acc_tables.tied_best(stats)
        if tied:
            best = stats.set_index("variant").loc[tied[0]]
            label = ", ".join(f"`{v}`" for v in tied) + (" (tie within the seed spread)" if len(tied) > 1 else "")
            lines.append(f"- **Accuracy** ({task}, n={seq_len}): {label}, {best['mean']:.3f} per target token.")
    for fingerprint, whole in part.groupby("fingerprint", sort=True):
        ok = whole[whole.status == "ok"]
        speed, decode = ok[ok.probe == "cross_speed"], ok[ok.probe == "cross_decode"]
        if not speed.empty:
            longest = speed[speed.seq_len == speed.seq_len.max()]
            fastest = longest.loc[longest.train_tokens_per_s.idxmax()]
            leanest = longest.loc[longest.peak_memory_mib.idxmin()]
            lines.append(
                f"- **Training at a source of {int(fastest.seq_len):,}** ({fingerprint}): fastest `{fastest.variant}` "
                f"({fastest.train_tokens_per_s:,.0f} tok/s{versus(longest, fastest, 'train_tokens_per_s')}), "
                f"leanest `{leanest.variant}` ({leanest.peak_memory_mib:,.1f} MiB"
                f"{versus(longest, leanest, 'peak_memory_mib')})."
            )
        if not decode.empty:
            longest = decode[decode.seq_len == decode.seq_len.max()]
            fastest = longest.loc[longest.decode_tokens_per_s.idxmax()]
            smallest = longest.loc[longest.cross_state_bytes.idxmin()]
            lines.append(
                f"- **Decoding over a source of {int(fastest.seq_len):,}** ({fingerprint}): fastest "
                f"`{fastest.variant}` ({fastest.decode_tokens_per_s:,.0f} tok/s"
                f"{versus(longest, fastest, 'decode_tokens_per_s')}); smallest cross state `{smallest.variant}` "
                f"({smallest.cross_state_bytes / 1024:,.1f} KiB{versus(longest, smallest, 'cross_state_bytes')})."
            )
    return lines


def versus(rows: pd.DataFrame, chosen: pd.Series, column: str) -> str:
    """', 2.1x full's' beside a chosen value, where the reference was measured at the same point."""
    reference = rows[rows.variant == REFERENCE]
    if chosen.variant == REFERENCE or reference.empty or not reference[column].iloc[0] > 0:
        return ""
    ratio = chosen[column] / reference[column].iloc[0]
    return f", {ratio:.2f}x `{REFERENCE}`'s" if ratio >= 0.1 else f", {ratio:.2g}x `{REFERENCE}`'s"


def cross_answer(frame: pd.DataFrame) -> list[str]:
    """The cross-attention answer for the report's opening section (the details: its own section)."""
    part = frame[frame.probe.isin(CROSS_PROBES)]
    lines = answer_lines(part) if not part.empty else []
    if not lines:
        return []
    return [
        "**Cross-attention** (encoder-decoder, only the decoder's attention over the source varies; "
        "section *Cross-attention*):",
        "",
        *lines,
        "",
    ]


def cannot_line(part: pd.DataFrame) -> list[str]:
    """The variants that cannot cross-attend, once (their records say so point by point)."""
    refused = part[part.status == "unsupported"]
    if refused.empty:
        return []
    names = ", ".join(f"`{v}`" for v in variant_order(refused.variant.unique()))
    return [
        f"**Cannot cross-attend** (not scored here): {names}. Their mixing needs queries and keys of one "
        "sequence (windows, blocks, shared hash buckets, decays or weights by distance, learned position-to-"
        "position weights), which mean nothing between two unaligned sequences; docs/concepts/skeleton.md has why.",
        "",
    ]


def cross_section(frame: pd.DataFrame) -> list[str]:
    """The whole section, or nothing when the sweep had no cross points."""
    part = frame[frame.probe.isin(CROSS_PROBES)]
    if part.empty:
        return []
    self_names = ", ".join(f"`{n}`" for n in sorted(part.self_attention.dropna().unique())) or f"`{REFERENCE}`"
    lines = [
        "## Cross-attention",
        "",
        "An encoder-decoder (`models.Transformer(encoder_layers=...)`) whose decoder attends over the encoder's "
        f"output: the variant is that cross-attention only; every self-attention is {self_names} "
        "(`sweep.cross.self_attention`), one pattern at a time as in CAB.",
        "",
        *answer_lines(part),
        "",
        *cannot_line(part),
    ]
    scored = part[part.status != "unsupported"]
    runs = scored[scored.probe == "cross_accuracy"]
    for (task, seq_len), group in runs.groupby(["task", "seq_len"], sort=True):
        targets = sorted(group.target_acc.dropna().unique())
        stop = f", stopping once validation reaches {targets[0]:g}" if targets else ""
        baseline = group.majority_baseline.dropna()
        lines += [
            f"### Accuracy: {task}, source and target of {seq_len} tokens",
            "",
            f"Teacher-forced training{stop}; test by greedy generation: per target token, and whole target right "
            "(exact match). Mean over seeds (min-max): a property of the config and the seeds. The cross state is "
            "what every decoder layer keeps of one source while generating."
            + (f" Majority-class baseline {baseline.iloc[0]:.3f}." if not baseline.empty else ""),
            "",
            md_table(accuracy_table(group)),
            "",
        ]
        unlearned = acc_tables.unlearned_line(acc_tables.accuracy_stats(acc_tables.at_chosen_lr(group)), REFERENCE)
        lines += [unlearned, ""] if unlearned else []
    lines += maps_lines(frame[(frame.probe == "maps") & (frame.status == "ok")])
    for fingerprint, whole in scored.groupby("fingerprint", sort=True):
        speed, decode = whole[whole.probe == "cross_speed"], whole[whole.probe == "cross_decode"]
        if not speed.empty:
            lines += speed_lines(speed, fingerprint)
        if not decode.empty:
            lines += decode_lines(decode, fingerprint)
    return lines


def maps_lines(maps: pd.DataFrame) -> list[str]:
    """The maps probe's cross case: each capable core's output error against exact cross-attention."""
    errors = error_table(maps.drop_duplicates(["variant", "seq_len"], keep="last")) if not maps.empty else maps
    if errors.empty or not ((errors.case == CROSS_CASE) & (errors.status == "ok")).any():
        return []
    cross = errors[(errors.case == CROSS_CASE) & (errors.status == "ok")]
    return [
        "### Distance to exact cross-attention",
        "",
        f"The maps probe's `{CROSS_CASE}` case: n/4 random queries over n random keys, each core's output "
        "against exact softmax cross-attention (relative error; a property of the config and seeds; the "
        "section *How close to exact attention* has every case).",
        "",
        md_table(error_pivot(cross, "output_rel_error")),
    ]


def speed_lines(speed: pd.DataFrame, fingerprint: str) -> list[str]:
    """A training step (source of M, the column, and a target of N) on one hardware fingerprint."""
    targets = ", ".join(str(int(n)) for n in sorted(speed.target_len.dropna().unique()))
    return [
        f"### Training step against the source's length, {fingerprint}",
        "",
        f"Forward, backward and AdamW over a source of M tokens (columns) and a target of {targets}; tokens/s "
        f"counts both. Relative to `{REFERENCE}` as cross-attention at the same M (training tokens/s, above 1 "
        "is faster; peak memory, below 1 is leaner):",
        "",
        "**Training tokens/s relative to `full`**",
        "",
        md_table(relative_table(speed, "train_tokens_per_s"), empty=f"`{REFERENCE}` was not measured here"),
        "**Peak memory relative to `full`**",
        "",
        md_table(relative_table(speed, "peak_memory_mib"), empty=f"`{REFERENCE}` was not measured here"),
        f"**From which source length a variant beats `{REFERENCE}`** (as in the speed section's crossover table)",
        "",
        md_table(crossover_table(speed), empty=f"no variant shares two or more lengths with `{REFERENCE}`"),
        *folded(
            "<b>Absolute numbers</b>: training tokens/s and peak MiB at every source length",
            [
                "**Training throughput, tokens/s**",
                "",
                md_table(cell_table(speed, "train_tokens_per_s", ",.0f")),
                "**Peak memory of a training step, MiB**",
                "",
                md_table(cell_table(speed, "peak_memory_mib", ",.1f")),
            ],
        ),
    ]


def decode_lines(decode: pd.DataFrame, fingerprint: str) -> list[str]:
    """One target token over a source of M (columns), and the cross state, on one hardware fingerprint."""
    decode = decode.assign(cross_kib=decode.cross_state_bytes / 1024)
    return [
        f"### Decoding over a source, {fingerprint}",
        "",
        "The encoder runs once and each decoder layer builds its cross state once (the source's keys and values, "
        "or the variant's summary of them); then single target tokens are timed (median). The cross state is "
        "a property of the config: a KV cache grows with M, a projection or a kernel summary does not.",
        "",
        "**Decoding throughput, tokens/s**",
        "",
        md_table(cell_table(decode, "decode_tokens_per_s", ",.0f")),
        "**Cross state of all layers, KiB**",
        "",
        md_table(cell_table(decode, "cross_kib", ",.1f")),
        "**Encoding the source and building the cross states, ms**",
        "",
        md_table(cell_table(decode, "prefill_ms", ",.1f")),
    ]
