"""Entry point: attention maps and approximation error against exact softmax attention.

    python -m runners.maps                                   # every registered variant, n=256
    python -m runners.maps attention=performer seq_len=1024
    python -m runners.maps attention=linformer attention.k=64 approximation.logit_scale=4 log_color=false

Writes ``maps.md`` (the error tables, the error-vs-budget curves and a grid of
heatmaps: variants x input case, exact softmax on top, one colour scale),
``errors.csv`` and ``budget.csv`` into ``out_dir``. The machinery lives in
:mod:`runners.approximation`; the sweep runs the same probe with ``sweep.maps=true``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

import variants
from runners.approximation.probe import maps_probe
from runners.hydra_glue.configs import CONF_DIR, register_configs
from runners.reporting.approximation import approximation_section, budget_table, error_table
from runners.sweeping.plan import attention_list

register_configs()


def run_maps(cfg: DictConfig) -> Path:
    """Probe every selected variant at ``cfg.seq_len``; write the report into ``cfg.out_dir``; its path."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model = OmegaConf.to_container(cfg.model, resolve=True)
    settings = OmegaConf.to_container(cfg.approximation, resolve=True) | {"heatmap_pixels": cfg.seq_len}
    records = []
    for attention in attention_list(cfg):
        print(f"{attention['name']} n={cfg.seq_len} ...", end="", file=sys.stderr, flush=True)
        result = maps_probe(attention=attention, model=model, seq_len=cfg.seq_len, settings=settings)
        summary = ", ".join(f"{case} {err:.3g}" for case, err in result["maps_summary"].items() if err is not None)
        print(f" output error: {summary}", file=sys.stderr, flush=True)
        records.append({"variant": attention["name"], "seq_len": cfg.seq_len} | result)
    out = Path(hydra.utils.to_absolute_path(cfg.out_dir))
    out.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(records)
    error_table(frame).to_csv(out / "errors.csv", index=False)
    budget_table(frame).to_csv(out / "budget.csv", index=False)
    lines = approximation_section(frame, out, "run", log_color=cfg.log_color, heading="#")
    report = out / "maps.md"
    report.write_text("\n".join(lines))
    return report


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="maps")
def main(cfg: DictConfig) -> None:
    try:
        report = run_maps(cfg)
    except variants.AttentionError as error:
        sys.exit(f"config error: {error}")
    print(f"report: {report}")


if __name__ == "__main__":
    main()
