"""Check that the sweep's CPU memory numbers scale as the algorithms say.

    python -m runners.memory_check                 # full_math and linformer at n = 2048 and 4096

Runs the sweep's own speed probe (whole skeleton, training step) for each
variant at both lengths, each in a fresh subprocess, and prints the peak
memory growth from the shorter to the longer length, for the recorded peak
(model state + what the step adds, as CUDA's ``max_memory_allocated``) and
for the process's resident high-water mark (interpreter and libraries
included). The issue's targets: quadratic attention grows by at least 2.5x,
Linformer by at most 1.5x. Linformer's memory is linear in n in every part
(its E/F projections are k x n parameters), so on the recorded peak it can
only stay under 1.5x where memory that does not depend on n is at least as
large as what does; the script prints the verdict for both measures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from omegaconf import OmegaConf

import variants
from runners.hydra_glue.configs import CONF_DIR, attention_config
from runners.measure.worker import measure_isolated
from runners.sweeping.execute import SPEED_PROBE


def probe_in_subprocess(variant: str, seq_len: int, batch: int) -> dict:
    """The sweep's own speed probe (memory part) with the `small` model preset, in a fresh interpreter."""
    kwargs = {
        "model_cfg": OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "model" / "small.yaml")),
        "attention": attention_config(variant),
        "seq_len": seq_len,
        "batch_size": batch,
        "causal": False,
        "device": "cpu",
    }
    return measure_isolated(SPEED_PROBE, kwargs, threads=torch.get_num_threads(), parts=("memory",))


def build_parser() -> argparse.ArgumentParser:
    """The command's flags (the docs' command reference is generated from this parser)."""
    parser = argparse.ArgumentParser(prog="python -m runners.memory_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=["full_math", "linformer"], help="registered names")
    parser.add_argument("--seq-lens", nargs=2, type=int, default=[2048, 4096], help="the shorter and longer length")
    parser.add_argument("--batch", type=int, default=4, help="batch size (the default sweep's)")
    return parser


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = build_parser().parse_args(argv)
    short, long = args.seq_lens
    targets = {"full_math": (">=", 2.5), "linformer": ("<=", 1.5)}
    ratios = {}
    for variant in args.variants:
        variants.get(variant)  # unknown names fail here, listing the registered ones
        a, b = (probe_in_subprocess(variant, n, args.batch) for n in (short, long))
        for measure in ("peak_memory_mib", "process_peak_mib"):
            ratio = b[measure] / a[measure]
            ratios[f"{variant}/{measure}"] = ratio
            verdict = ""
            if variant in targets:
                op, bound = targets[variant]
                met = ratio >= bound if op == ">=" else ratio <= bound
                verdict = f"  target {op} {bound}: {'met' if met else 'MISSED'}"
            print(
                f"{variant:>10} {measure:<17} {a[measure]:8.1f} MiB at n={short}, {b[measure]:8.1f} MiB at "
                f"n={long}: x{ratio:.2f}{verdict}"
            )
        print(
            f"{'':>10} (state {a['state_memory_mib']:.1f} -> {b['state_memory_mib']:.1f} MiB, "
            f"step adds {a['step_memory_mib']:.1f} -> {b['step_memory_mib']:.1f} MiB)"
        )
    return ratios


if __name__ == "__main__":
    main()
