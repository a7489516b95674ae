"""One wandb run per point, grouped per sweep; offline unless ``wandb.mode=online``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig


def log_to_wandb(cfg: DictConfig, record: dict[str, Any], sweep_id: str) -> None:
    """Log the record's numbers and status as one finished run (files under ``wandb.dir``, no account needed)."""
    os.environ.setdefault("WANDB_SILENT", "true")  # one progress line per point is enough
    import wandb

    metrics = {k: v for k, v in record.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    for row in record.get("errors") or []:  # maps probe: one metric per input case
        metrics |= {f"{row['case']}/{k}": v for k, v in row.items() if isinstance(v, float)}
    run = wandb.init(
        project=cfg.wandb.project,
        mode=cfg.wandb.mode,
        dir=str(Path(cfg.wandb.dir).resolve()),
        group=sweep_id,
        name=f"{record['variant']}-{record['probe']}-{record['seq_len']}",
        config=record["config"],
        tags=[record["status"], record["hardware"]],
        reinit="finish_previous",
    )
    run.log(metrics)
    run.summary["status"] = record["status"]
    run.finish()
