"""The report's "Generation" section: decoding speed and state memory against context length.

Decoding is where the variants differ most in kind: softmax attention keeps a
KV cache that grows with the context, a sliding window keeps a window, the
linear family a constant summary. The fitted exponent of n^p says which; the
crossover column says from which context a variant decodes faster than
``full`` (:mod:`runners.reporting.crossover`: interpolated between measured
contexts, or extrapolated and marked so). Speeds are measurements of this hardware; state bytes are a
property of the config.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from runners.reporting.crossover import paired_crossover
from runners.reporting.md import folded, md_table
from runners.reporting.plots import draw_lines, save_plot
from runners.reporting.tables import REFERENCE, by_variant, cell_table, interval_cells, scaling_exponent


def growth_table(decode: pd.DataFrame) -> pd.DataFrame:
    """Per variant: fitted exponents of state bytes and step time over n, and where it overtakes ``full``."""
    ok = decode[decode.status == "ok"]
    reference_points = ok[ok.variant == REFERENCE]
    rows = {}
    for variant, group in ok.groupby("variant"):
        group = group.sort_values("seq_len")
        row = {
            "lengths": f"{group.seq_len.min()}-{group.seq_len.max()}",
            "state bytes ~ n^p": scaling_exponent(group.seq_len, group.state_bytes),
            "step time ~ n^p": scaling_exponent(group.seq_len, group.decode_ms),
        }
        if variant != REFERENCE and not reference_points.empty:
            answer = paired_crossover(group, reference_points, "decode_tokens_per_s", False)
            row[f"faster than {REFERENCE} from n ="] = answer.cell() if answer else ""
        rows[variant] = row
    return by_variant(pd.DataFrame.from_dict(rows, orient="index").rename_axis("variant"))


def generation_section(decode: pd.DataFrame, out: Path, tag: str) -> list[str]:
    """Tables and log-log plots of the decode points of one hardware fingerprint."""
    decode = decode.assign(state_kib=decode.state_bytes / 1024)
    ok = decode[decode.status == "ok"]
    batch = ", ".join(str(int(b)) for b in sorted(decode.batch_size.dropna().unique())) or "?"
    lines = [
        "### Generation",
        "",
        "One new token through the whole causal skeleton after a prompt of n tokens (`sweep.decode_lens`): "
        f"the median time of single-token steps that carry each layer's state (batch {batch}), and the state "
        "the layers hold after the prompt. Variants that cannot decode are listed under *Not scored*.",
        "",
        f"**Decoding throughput relative to `{REFERENCE}`**, median of per-round ratios (interval in brackets; "
        "see *Relative to full* above)",
        "",
        md_table(
            interval_cells(decode, "decode_tokens_per_s", ratio=True, fmt=".2f"),
            empty=f"`{REFERENCE}` did not decode at these lengths",
        ),
        "",
        "**Decoding state of all layers, KiB** (a property of the config)",
        "",
        md_table(cell_table(decode, "state_kib", ",.1f")),
        "",
        "**Growth with context length**: fitted exponent p of n^p (state: KV cache ~1, window and linear "
        "family ~0), and the context from which the variant decodes faster than `full` at every longer measured "
        "context too (interpolated between two measured contexts, or extrapolated from the fitted growth and "
        "marked so).",
        "",
        md_table(growth_table(decode), empty="no variant decoded at two or more context lengths"),
        "",
        *folded(
            "<b>Decoding throughput, tokens/s</b>, at every context length",
            [md_table(cell_table(decode, "decode_tokens_per_s", ",.0f"))],
        ),
    ]
    if ok.empty:
        return lines
    plots = [
        save_plot(
            out / f"decode_tokens_per_s_{tag}.png",
            "Decoding throughput after a prompt of n tokens",
            "context length n",
            "tokens/s",
            lambda ax: draw_lines(ax, ok, "decode_tokens_per_s"),
        ),
        save_plot(
            out / f"decode_state_{tag}.png",
            "Decoding state of all layers",
            "context length n",
            "KiB",
            lambda ax: draw_lines(ax, ok, "state_kib", with_exponent=True),
        ),
    ]
    return lines + [f"![{path.stem}]({path.name})\n" for path in plots]
