"""Check that the sweep's CPU memory numbers scale as the algorithms say.

    python -m runners.memory_check                 # full_math and linformer at n = 2048 and 4096

Runs the sweep's own speed probe (whole skeleton, training step) for each
variant at both lengths, each in a fresh subprocess, and prints the peak
memory growth from the shorter to the longer length: quadratic attention
should grow by well over 2.5x, Linformer by at most 1.5x.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

import variants
from runners.config import CONF_DIR, default_attention
from runners.probe import speed_probe


def probe(variant: str, seq_len: int, batch: int) -> dict:
    """The sweep's speed probe with the `small` model preset, in this process."""
    import torch

    return speed_probe(
        model_cfg=OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "model" / "small.yaml")),
        attention=default_attention(variant),
        seq_len=seq_len,
        batch_size=batch,
        causal=False,
        device=torch.device("cpu"),
        repeats=3,
    )


def probe_in_subprocess(variant: str, seq_len: int, batch: int) -> dict:
    """One point per fresh interpreter, so no point's heap state leaks into another."""
    command = [sys.executable, "-m", "runners.memory_check", "--worker", json.dumps([variant, seq_len, batch])]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=["full_math", "linformer"])
    parser.add_argument("--seq-lens", nargs=2, type=int, default=[2048, 4096])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(probe(*json.loads(args.worker))))
        return {}
    short, long = args.seq_lens
    ratios = {}
    for variant in args.variants:
        variants.get(variant)  # unknown names fail here, listing the registered ones
        a, b = (probe_in_subprocess(variant, n, args.batch) for n in (short, long))
        ratios[variant] = b["peak_memory_mib"] / a["peak_memory_mib"]
        print(
            f"{variant:>10}: peak {a['peak_memory_mib']:8.1f} MiB at n={short}, {b['peak_memory_mib']:8.1f} MiB "
            f"at n={long}: x{ratios[variant]:.2f}"
        )
    return ratios


if __name__ == "__main__":
    main()
