"""Language modelling on real text: bits per byte, the recall-hit split and loss by position (tasks/text.py).

The quality a user gives up on real data, in the papers' own unit (bits per byte), split as Zoology splits
the gap between mixers: bytes that complete a string seen earlier in the same sequence (recall hits, far
ones beyond a 64-byte window) against the other bytes; and the loss by position, whose fall from the start
of a sequence to its end is the in-context gain (Olsson et al. 2022). A reference that did not beat the
unigram baseline by ``LEARNED_MARGIN_BITS`` or gained nothing from its context makes the ranking
uninformative, and the section says so in bold. Small, short runs may not rank variants as large ones do.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from runners.reporting.md import md_table
from runners.reporting.styles import REFERENCE, variant_order, variant_style

TEXT_HEADING = "Language modelling on real text"
TEXT_TASK = "text"
LEARNED_MARGIN_BITS = 1.0  # the reference must be at least this far below the unigram entropy ...
POSITIONS = [f"test_bpb_pos{i}" for i in range(8)]  # ... and cheaper at the end of a sequence than at its start


def text_runs(accuracy: pd.DataFrame) -> pd.DataFrame:
    """The accuracy rows of the language-modelling task (scored in bits per byte, not accuracy)."""
    return accuracy[accuracy.task == TEXT_TASK] if "task" in accuracy else accuracy.iloc[0:0]


def hit_bits(runs: pd.DataFrame) -> pd.Series:
    """Bits per byte on every recall hit, near and far, weighted by how many of each the test split has."""
    near, far = runs.test_share_near, runs.test_share_far
    return (runs.test_bpb_near * near + runs.test_bpb_far * far) / (near + far)


def variant_stats(runs: pd.DataFrame) -> pd.DataFrame:
    """Per variant (ok runs): bits per byte over seeds with its spread, the split, the gain and the cost."""
    ok = runs[runs.status == "ok"].assign(test_bpb_hits=hit_bits)
    rows = []
    for variant, mine in ok.groupby("variant"):
        rows.append(
            {
                "variant": variant,
                "seeds": len(mine),
                "bpb": mine.test_bpb.mean(),
                "bpb_min": mine.test_bpb.min(),
                "bpb_max": mine.test_bpb.max(),
                "hits": mine.test_bpb_hits.mean(),
                "far": mine.test_bpb_far.mean(),
                "near": mine.test_bpb_near.mean(),
                "other": mine.test_bpb_other.mean(),
                "gain": mine.in_context_gain_bits.mean(),
                "tok_s": mine.train_tokens_per_s_total.median(),
                "peak_mib": mine.train_peak_memory_mib.median(),
                "params": mine.params.max(),
                "steps": mine.steps.max(),
                **{position: mine[position].mean() for position in POSITIONS},
            }
        )
    stats = pd.DataFrame(rows)
    return stats.set_index("variant").reindex(variant_order(stats.variant)) if rows else stats


def learned_line(stats: pd.DataFrame, unigram: float) -> str:
    """'' where the reference learned; else one bold line saying why the ranking is not informative."""
    if REFERENCE not in stats.index:
        return ""
    ref = stats.loc[REFERENCE]
    problems = []
    if not ref.bpb <= unigram - LEARNED_MARGIN_BITS:
        problems.append(
            f"`{REFERENCE}` reaches {ref.bpb:.2f} bits per byte, less than {LEARNED_MARGIN_BITS:g} bit below the "
            f"unigram baseline {unigram:.2f}"
        )
    if not ref.hits < ref.other:
        problems.append(f"its recall hits ({ref.hits:.2f}) are no cheaper than the other bytes ({ref.other:.2f})")
    if not ref.gain > 0:
        problems.append(f"it shows no in-context gain ({ref.gain:+.2f} bits from the first eighth to the last)")
    if not problems:
        return ""
    return (
        "**The reference did not learn this setting, so its ranking is not informative**: "
        + "; ".join(problems)
        + " (raise `optim.max_steps` or the model's size)."
    )


def scale_line(runs: pd.DataFrame) -> str:
    """What was measured: the corpus, its digest and size, the model, the budget, the seeds."""
    first = runs.iloc[0]
    corpus = f"{first.corpus} (digest `{first.corpus_digest}`, {first.corpus_files:,.0f} files, " + (
        f"{first.corpus_bytes / 1e6:.1f} MB)"
    )
    model = f"{first.model_layers:.0f} layers of width {first.model_dim:.0f}" if pd.notna(first.model_layers) else ""
    return (
        f"Corpus: {corpus}, split by file (1 in 20 test, 1 in 20 validation, by a hash of the path). Model: "
        f"{model}, sequences of n = {first.seq_len:,.0f} bytes, batch {first.task_batch_size:.0f}, "
        f"{runs.steps.max():,.0f} steps, {runs.seed.nunique()} seed(s); test: {first.test_share_far:.0%} far and "
        f"{first.test_share_near:.0%} near recall hits (a byte completing a {first.recall_ngram:.0f}-byte string "
        f"seen earlier in the sequence, more or fewer than {first.recall_far:.0f} bytes back). **A small model "
        "trained briefly**: small, short runs may not rank variants as large ones do (Longformer; Tay et al. "
        "2022), so read this as what your budget buys at this scale."
    )


def text_table(stats: pd.DataFrame, peak_kind: str) -> pd.DataFrame:
    """The section's table: bits per byte with its spread, the split, the gain and the cost of the runs."""
    reference_hits = stats.hits.get(REFERENCE)
    table = pd.DataFrame(index=stats.index)
    table["bits per byte (min-max, seeds)"] = [
        f"{row.bpb:.3f} ({row.bpb_min:.3f}-{row.bpb_max:.3f}, {row.seeds:.0f})" for row in stats.itertuples()
    ]
    table["recall hits"] = stats.hits.map("{:.3f}".format)
    if reference_hits is not None:
        table[f"hits - `{REFERENCE}`'s"] = (stats.hits - reference_hits).map("{:+.3f}".format)
    table["far hits"] = stats.far.map("{:.3f}".format)
    table["near hits"] = stats.near.map("{:.3f}".format)
    table["other bytes"] = stats.other.map("{:.3f}".format)
    table["in-context gain"] = stats.gain.map("{:+.3f}".format)
    table["train tok/s"] = stats.tok_s.map("{:,.0f}".format)
    table[f"peak MiB ({peak_kind})"] = stats.peak_mib.map("{:,.0f}".format)
    table["params"] = stats.params.map("{:,.0f}".format)
    return table


def position_plot(stats: pd.DataFrame, seq_len: int, out: Path, tag: str) -> Path:
    """Loss by position: bits per byte in eight equal stretches of the sequence, every variant in its style."""
    from runners.reporting.plots import save_plot  # matplotlib only where a plot is drawn

    width = seq_len / len(POSITIONS)
    centres = [width * (i + 0.5) for i in range(len(POSITIONS))]

    def draw(ax) -> None:
        for variant, row in stats.iterrows():
            ax.plot(centres, [row[p] for p in POSITIONS], label=variant, **variant_style(variant))

    path = out / f"text_positions_{seq_len}_{tag}.png"
    return save_plot(path, f"Loss by position, n={seq_len}", "position in the sequence (bytes)", "bits per byte", draw)


def text_section(runs: pd.DataFrame, out: Path, tag: str) -> list[str]:
    """The section for the language-modelling runs of one hardware fingerprint (all of them, if accuracy)."""
    if runs.empty:
        return []
    lines = [f"### {TEXT_HEADING}", ""]
    for (seq_len, direction), setting in runs.groupby(["seq_len", "direction"], sort=True):
        stats = variant_stats(setting)
        failed = setting[setting.status != "ok"]
        lines += [f"**n = {seq_len:,}, {direction}**", "", scale_line(setting[setting.status == "ok"]), ""]
        if stats.empty:
            lines += ["No run finished.", ""]
            continue
        unigram = setting.unigram_entropy_bits.dropna().iloc[0]
        lines += [
            f"Bits per byte on the test split (lower is better; unigram baseline {unigram:.3f}, the test split's "
            "own byte entropy): mean over seeds with the min-max spread. Recall hits are the bytes a model can "
            "copy from earlier in the sequence; `hits - full's` is what a variant pays there over exact "
            "attention. In-context gain: bits per byte in the first eighth of a sequence minus in the last. "
            "Throughput and peak memory are of the training runs on this hardware.",
            "",
        ]
        learned = learned_line(stats, unigram)
        lines += [learned, ""] if learned else []
        kinds = setting.train_peak_memory_kind.dropna()
        peak_kind = str(kinds.iloc[0]) if not kinds.empty else "not recorded"
        lines += [md_table(text_table(stats, peak_kind)), ""]
        if not failed.empty:
            lines += ["Runs that did not finish:", "", md_table(failed[["variant", "seed", "status", "message"]]), ""]
        plot = position_plot(stats, int(seq_len), out, tag)
        lines += [f"![{plot.stem}]({plot.name})", ""]
    return lines
