"""Entry point: one accuracy run of one variant on one generated task.

    python -m runners.train task=mqar attention=full
    python -m runners.train task=listops attention=performer optim.max_time_s=120

The machinery lives in :mod:`runners.training`; this file composes the config
(``conf/train.yaml``) and prints the result.
"""

from __future__ import annotations

import sys
from typing import Any

import hydra
from omegaconf import DictConfig
from pytorch_lightning.utilities import rank_zero_only

from runners.checks import ConfigError
from runners.hydra_glue.configs import CONF_DIR, register_configs
from runners.training.run import run_training

register_configs()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> dict[str, Any]:
    try:
        result = run_training(cfg)
    except ConfigError as error:
        sys.exit(f"config error: {error}")
    if rank_zero_only.rank == 0:  # under ddp every rank runs this script
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items() if k != "loss_trace"})
    return result


if __name__ == "__main__":
    main()
