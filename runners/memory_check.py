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

from runners.config import default_attention


def probe_in_subprocess(variant: str, seq_len: int, batch: int) -> dict:
    code = (
        "import json, torch; from runners.probe import speed_probe; from runners.config import default_attention;"
        f"print(json.dumps(speed_probe(model_cfg=dict(dim=64, layers=2, heads=4, dim_head=None, ff_mult=4,"
        f" dropout=0.0, attn_dropout=0.0, positional='sinusoidal'), attention=default_attention({variant!r}),"
        f" seq_len={seq_len}, batch_size={batch}, causal=False, device=torch.device('cpu'), repeats=3)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=["full_math", "linformer"])
    parser.add_argument("--seq-lens", nargs=2, type=int, default=[2048, 4096])
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args(argv)
    short, long = args.seq_lens
    ratios = {}
    for variant in args.variants:
        default_attention(variant)
        a, b = (probe_in_subprocess(variant, n, args.batch) for n in (short, long))
        ratios[variant] = b["peak_memory_mib"] / a["peak_memory_mib"]
        print(
            f"{variant:>10}: peak {a['peak_memory_mib']:8.1f} MiB at n={short}, {b['peak_memory_mib']:8.1f} MiB "
            f"at n={long}: x{ratios[variant]:.2f}"
        )
    return ratios


if __name__ == "__main__":
    main()
