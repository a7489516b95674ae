"""Plots tell every registered variant apart, with the legend beside the axes; tables list full first, then families."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import pytest

import variants
from runners.reporting import plots, styles
from runners.reporting.tables import cell_table, flat_results


def every_variant_store() -> pd.DataFrame:
    """Speed records of every registered variant at three lengths, as the report reads them from a store."""
    records = []
    for place, name in enumerate(variants.names()):
        for n in (256, 512, 1024):
            records.append(
                {
                    "variant": name,
                    "probe": "speed",
                    "seq_len": n,
                    "status": "ok",
                    "hardware": "cpu",
                    "hardware_info": {"fingerprint": "cpu-A"},
                    "train_tokens_per_s": 1e4 / (1 + place) * 256 / n,
                    "infer_tokens_per_s": 3e4,
                    "peak_memory_mib": 10.0 + place + n / 100,
                    "config": {"batch_size": 4, "causal": False},
                }
            )
    return flat_results(records)


def drawn_styles(ax) -> dict[str, tuple]:
    return {line.get_label(): (line.get_color(), line.get_marker(), line.get_linestyle()) for line in ax.get_lines()}


@pytest.fixture
def figure():
    ok = every_variant_store()
    fig = plots.plot_figure("Throughput", "n", "tokens/s", lambda ax: plots.draw_lines(ax, ok, "train_tokens_per_s"))
    yield fig
    plt.close(fig)


def test_no_two_variants_share_a_style_in_a_real_figure(figure):
    drawn = drawn_styles(figure.axes[0])
    assert set(drawn) == set(variants.names())
    assert len(set(drawn.values())) == len(drawn), "two variants look the same"


def test_the_legend_sits_outside_the_axes(figure):
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    ax = figure.axes[0]
    legend = ax.get_legend().get_window_extent(renderer)
    axes = ax.get_window_extent(renderer)
    assert not legend.overlaps(axes), (legend, axes)
    assert ax.get_legend().get_texts()[0].get_text() == "full"  # listed full first


def test_a_family_shares_a_hue_and_the_style_is_the_same_in_every_plot():
    kernel = [name for name in variants.names() if variants.get(name).family == "kernel"]
    assert len(kernel) >= 2
    reds_greens_blues = [plt.matplotlib.colors.to_rgb(styles.variant_style(name)["color"]) for name in kernel]
    assert all(r >= g >= b for r, g, b in reds_greens_blues), "kernel methods are oranges"
    assert styles.variant_style("performer") == styles.variant_style("performer")
    assert styles.variant_style("performer (causal)")["markerfacecolor"] == "none"  # its causal row, hollow


def test_a_name_no_longer_registered_still_gets_a_stable_style():
    assert styles.variant_style("retired_variant") == styles.variant_style("retired_variant")
    assert styles.family_of("retired_variant") == "other"


def test_tables_put_full_first_then_sort_by_family():
    table = cell_table(every_variant_store(), "train_tokens_per_s", ",.0f")
    order = list(table.index)
    assert order[0] == "full"
    families = [variants.get(name).family for name in order]
    ranks = [list(variants.FAMILIES).index(f) for f in families]
    assert ranks == sorted(ranks), list(zip(order, families, strict=True))


def test_a_variant_with_an_unknown_family_is_refused_at_registration():
    class Odd(variants.Attention):
        family = "exotic"

        def attend(self, q, k, v, mask):
            return v

    with pytest.raises(ValueError, match="family 'exotic' is unknown; families: exact, sparse"):
        variants.register("odd")(Odd)
    assert "odd" not in variants.names()
