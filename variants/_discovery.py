"""Import every variant module in this package so that one new file is enough."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path


def discover() -> list[str]:
    """Import each public module of ``variants``; returns the module names imported."""
    package_dir = Path(__file__).parent
    found = []
    for info in pkgutil.iter_modules([str(package_dir)]):
        if info.name.startswith("_"):
            continue
        importlib.import_module(f"variants.{info.name}")
        found.append(info.name)
    return found
