"""Main job (first cut): time every variant inside the shared skeleton on CPU.

Builds the skeleton per variant and sequence length, times a forward pass and
a training step (warm-up, then the median of repeated steps), and prints a
table. The full sweep (accuracy, memory, results store) builds on this.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import hydra
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

import models
import variants

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def attention_configs(cfg: DictConfig) -> list[dict[str, Any]]:
    """The chosen variant, or every registered one with its conf/attention defaults."""
    if cfg.get("attention") is not None:
        return [OmegaConf.to_container(cfg.attention, resolve=True)]
    configs = []
    for name in variants.names():
        path = Path(CONF_DIR) / "attention" / f"{name}.yaml"
        configs.append(OmegaConf.to_container(OmegaConf.load(path)) if path.exists() else {"name": name})
    return configs


def median_seconds(step, *, warmup: int, repeats: int) -> float:
    """Median wall time of ``step()`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(cfg: DictConfig, attention: dict[str, Any], seq_len: int) -> dict[str, Any]:
    """Forward and training-step throughput of one variant at one length."""
    torch.manual_seed(cfg.seed)
    model = models.Transformer(
        vocab_size=cfg.vocab_size,
        num_outputs=cfg.vocab_size,
        max_seq_len=seq_len,
        attention=attention,
        **OmegaConf.to_container(cfg.model),
    )
    tokens = torch.randint(0, cfg.vocab_size, (cfg.sweep.batch_size, seq_len))
    labels = tokens[:, 0]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def train_step():
        loss = torch.nn.functional.cross_entropy(model(tokens), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def forward():
        with torch.inference_mode():
            model(tokens)

    tokens_per_step = cfg.sweep.batch_size * seq_len
    timing = {"warmup": cfg.sweep.warmup_steps, "repeats": cfg.sweep.timed_steps}
    return {
        "variant": attention["name"],
        "seq_len": seq_len,
        "train_tokens_per_s": tokens_per_step / median_seconds(train_step, **timing),
        "infer_tokens_per_s": tokens_per_step / median_seconds(forward, **timing),
    }


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> pd.DataFrame:
    rows = [measure(cfg, attn, n) for attn in attention_configs(cfg) for n in cfg.sweep.seq_lens]
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda x: f"{x:,.0f}"))
    return table


if __name__ == "__main__":
    main()
