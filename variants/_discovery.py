"""Import every variant module of a package so that one new file is enough."""

from __future__ import annotations

import importlib
import pkgutil


def discover(package: str = "variants") -> list[str]:
    """Import each public module (name not starting with ``_``) of ``package``; returns their names.

    ``variants`` itself is discovered on ``import variants``; a folder of
    variants kept elsewhere (a package on ``sys.path``) registers the same way
    with ``variants.discover("my_variants")``.
    """
    path = importlib.import_module(package).__path__
    found = []
    for info in pkgutil.iter_modules(path):
        if info.name.startswith("_"):
            continue
        importlib.import_module(f"{package}.{info.name}")
        found.append(info.name)
    return found
