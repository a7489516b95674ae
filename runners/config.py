"""Where the Hydra configs live, and how an attention config becomes build arguments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

import variants

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def attention_dict(cfg: DictConfig) -> dict[str, Any]:
    """``cfg.attention`` as ``{"name": ..., **hyperparameters}``, validated against the registry."""
    attention = OmegaConf.to_container(cfg.attention, resolve=True)
    variants.get(attention["name"])  # unknown names fail here, listing the registered ones
    return attention


def default_attention(name: str) -> dict[str, Any]:
    """A variant's ``conf/attention/NAME.yaml`` if present, else just its name."""
    path = Path(CONF_DIR) / "attention" / f"{name}.yaml"
    if path.exists():
        return OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    return {"name": name}
