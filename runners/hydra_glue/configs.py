"""Where the Hydra configs come from: YAML presets in ``conf/``, and options generated from the code.

One source of truth per default. Config groups whose options *are classes*
are generated from those classes' keyword-only signatures into Hydra's
ConfigStore, so a default is written once, in the code, and cannot drift:

- ``attention=NAME``: every registered variant, ``{"name": NAME, **its hyperparameters}``.
  A variant added as one file in ``variants/`` is selectable (and its
  hyperparameters overridable) with no YAML.
- ``task=NAME``: every task in :data:`TASKS`, ``{"_target_": class, **its arguments}``
  with ``seed: ${seed}``.

Groups whose options are *presets* (``model``, ``optim``, ``hardware``,
``sweep``, ``launcher``) are YAML in ``conf/``; presets inherit a base preset
through the defaults list and state only what differs, and the test suite
checks that ``model/small`` equals the skeleton's own defaults.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

import tasks
import variants

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")

TASKS: dict[str, type[tasks.GeneratedTask]] = {
    "listops": tasks.ListOps,
    "lookup": tasks.Lookup,
    "mqar": tasks.MQAR,
    "selective_copy": tasks.SelectiveCopy,
    "sort": tasks.Sort,
    "text": tasks.Text,
}


def keyword_defaults(cls: type) -> dict[str, Any]:
    """Keyword-only arguments of ``cls.__init__`` and their defaults (``MISSING`` where required).

    Follows ``**common`` into the base classes, so arguments a subclass passes
    through (split sizes, seed) are included with the base's defaults.
    """
    found: dict[str, Any] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = list(inspect.signature(klass.__init__).parameters.values())
        for p in params:
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in found:
                found[p.name] = MISSING if p.default is inspect.Parameter.empty else p.default
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            break
    return found


def attention_config(name: str) -> dict[str, Any]:
    """``{"name": NAME, **hyperparameters}``: what ``attention=NAME`` selects."""
    own = variants.hyperparameters(name)  # the variant's own, without heads, dim_head, causal, dropout
    return {"name": name} | {k: v for k, v in keyword_defaults(variants.get(name)).items() if k in own}


def task_config(name: str) -> dict[str, Any]:
    """``{"_target_": ..., **arguments}``: what ``task=NAME`` selects; the seed follows the run's ``seed``."""
    cls = TASKS[name]
    return {"_target_": f"{cls.__module__}.{cls.__qualname__}"} | keyword_defaults(cls) | {"seed": "${seed}"}


def register_configs() -> None:
    """Put the generated ``attention`` and ``task`` options into Hydra's ConfigStore (idempotent)."""
    store = ConfigStore.instance()
    for name in variants.names():
        store.store(group="attention", name=name, node=attention_config(name))
    for name in variants.cross_names():  # an encoder-decoder's cross-attention (null: the default rule)
        store.store(group="cross_attention", name=name, node=attention_config(name))
    for name in TASKS:
        store.store(group="task", name=name, node=task_config(name))
