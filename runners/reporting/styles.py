"""One fixed look per variant, the same in every plot of every report, and one order for every table.

Seventeen variants do not fit matplotlib's ten-colour cycle, and a colour
that changes from plot to plot makes a reader re-learn the legend each time.
So a variant's style is a function of the registry alone: its family
(:data:`variants.FAMILIES`) picks a colour map (kernel methods are oranges,
sparse patterns blues, ...), its place inside the family a shade and a line
style, and its place in the registry a marker. Colour, marker and line style
together tell every registered variant apart. Tables list ``full`` first,
then the other variants family by family.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Iterable
from typing import Any

import matplotlib

import variants

REFERENCE = "full"
CAUSAL = " (causal)"  # suffix of causal speed points, which are compared with causal full
FAMILY_COLORMAPS = {
    "exact": "Greys",
    "sparse": "Blues",
    "low-rank": "Greens",
    "kernel": "Oranges",
    "recurrent": "Purples",
    "learned": "Reds",
    "other": "copper",
}
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "h", "<", ">", "p", "d", "8", "H", "1", "2", "3", "4")
LINESTYLES = ("-", "--", "-.", ":")


def family_of(name: str) -> str:
    """The family a (possibly causal-suffixed) name belongs to; ``other`` for names no longer registered."""
    base = name.removesuffix(CAUSAL)
    return variants.get(base).family if base in variants.names() else "other"


def _sort_key(name: str) -> tuple[int, int, str]:
    base = name.removesuffix(CAUSAL)
    families = list(variants.FAMILIES)
    return (base != REFERENCE, families.index(family_of(base)), name)


def variant_order(names: Iterable[str]) -> list[str]:
    """``names`` with ``full`` first, then family by family (the order of ``variants.FAMILIES``), by name inside."""
    return sorted(set(names), key=_sort_key)


@functools.cache
def _registered_styles() -> dict[str, dict[str, Any]]:
    ordered = variant_order(variants.names())
    styles = {}
    for family in variants.FAMILIES:
        members = [name for name in ordered if family_of(name) == family]
        cmap = matplotlib.colormaps[FAMILY_COLORMAPS[family]]
        for place, name in enumerate(members):
            shade = 0.85 if len(members) == 1 else 0.95 - 0.5 * place / (len(members) - 1)  # dark to mid
            styles[name] = {
                "color": matplotlib.colors.to_hex(cmap(shade)),
                "marker": MARKERS[ordered.index(name) % len(MARKERS)],
                "linestyle": LINESTYLES[place % len(LINESTYLES)],
            }
    return styles


def variant_style(name: str) -> dict[str, Any]:
    """``color``, ``marker``, ``linestyle`` (and a hollow marker for causal rows) for ``plot``/``errorbar``."""
    base = name.removesuffix(CAUSAL)
    style = _registered_styles().get(base)
    if style is None:  # a name from old records: a stable look from the "other" palette
        digest = zlib.crc32(base.encode())
        cmap = matplotlib.colormaps[FAMILY_COLORMAPS["other"]]
        style = {
            "color": matplotlib.colors.to_hex(cmap(0.3 + 0.6 * (digest % 97) / 96)),
            "marker": MARKERS[digest % len(MARKERS)],
            "linestyle": LINESTYLES[digest % len(LINESTYLES)],
        }
    if name.endswith(CAUSAL):
        style = style | {"markerfacecolor": "none"}
    return dict(style)
