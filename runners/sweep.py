"""The main job: compare attention variants on speed, memory and accuracy, keeping every result.

    python -m runners.sweep                               # every registered variant, default sweep, CPU
    python -m runners.sweep attention=linformer           # one variant
    python -m runners.sweep -m attention=local,performer hardware=cpu,cuda
    python -m runners.sweep sweep=lra attention.k=128 model.layers=4 task=listops

A sweep is a list of points (variant x hardware x sequence length x probe).
Speed points run :func:`runners.probe.speed_probe` over ``sweep.seq_lens``;
accuracy points train with :func:`runners.train.run_training` over
``sweep.accuracy_seq_lens``. Each point is written to the results store the
moment it completes; points already there with the same config are skipped
unless ``force=true``. A failing point (out of memory, time budget, NaN,
unsupported combination) is recorded with its status and the sweep goes on.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import hydra
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

import variants
from runners import context, launch, report, store
from runners.config import CONF_DIR, default_attention
from runners.failures import PointFailed, classify_failure
from runners.probe import isolated_speed_probe as measure_speed
from runners.train import run_training

RESULT_COLUMNS = [
    "variant",
    "hardware",
    "probe",
    "seq_len",
    "status",
    "train_tokens_per_s",
    "infer_tokens_per_s",
    "peak_memory_mib",
    "flops_per_step",
    "test_acc",
]


class ConfigError(ValueError):
    """A bad config value, reported before any work starts."""


def attention_list(cfg: DictConfig) -> list[dict[str, Any]]:
    """The selected variant, or every registered one with its conf/attention defaults."""
    if cfg.get("attention") is not None:
        return [OmegaConf.to_container(cfg.attention, resolve=True)]
    return [default_attention(name) for name in variants.names()]


def validate(cfg: DictConfig, attentions: list[dict[str, Any]]) -> None:
    """Fail fast on bad values: unknown variants or hyperparameters, empty or bad lengths."""
    for attention in attentions:
        hparams = {k: v for k, v in attention.items() if k != "name"}
        longest = max([*cfg.sweep.seq_lens, *cfg.sweep.accuracy_seq_lens], default=1)
        try:
            variants.build(attention["name"], heads=1, dim_head=8, max_seq_len=longest, **hparams)
        except variants.AttentionError as error:
            raise ConfigError(f"attention config {attention}: {error}") from None
    for key in ("seq_lens", "accuracy_seq_lens"):
        lens = list(cfg.sweep[key])
        if any(not isinstance(n, int) or n < 1 for n in lens):
            raise ConfigError(f"sweep.{key} must be positive integers; got {lens}")
    if not cfg.sweep.seq_lens and not cfg.sweep.accuracy_seq_lens:
        raise ConfigError("sweep.seq_lens and sweep.accuracy_seq_lens are both empty: nothing to measure")
    if cfg.sweep.repeats < 1 or cfg.sweep.batch_size < 1:
        raise ConfigError("sweep.repeats and sweep.batch_size must be >= 1")
    if cfg.hardware.get("strategy") == "ddp" and cfg.hardware.devices != 1 and cfg.sweep.accuracy_seq_lens:
        raise ConfigError(
            "hardware.strategy=ddp relaunches this script once per device, and each copy would run the whole "
            "sweep; inside a sweep use hardware.strategy=ddp_spawn (or train one config with "
            "python -m runners.train hardware.strategy=ddp)"
        )
    if cfg.logger not in ("wandb", "none"):
        raise ConfigError(f"logger={cfg.logger!r} is unknown; choose wandb or none")


def plan_points(cfg: DictConfig, attentions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every point of the sweep with the config that identifies it."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    hardware = OmegaConf.to_container(cfg.hardware, resolve=True)
    task = OmegaConf.to_container(cfg.task, resolve=True)
    points = []
    for attention in attentions:
        shared = {"attention": attention, "model": model, "hardware": hardware}
        for seq_len in cfg.sweep.seq_lens:
            points.append(
                shared
                | {
                    "probe": "speed",
                    "seq_len": seq_len,
                    "causal": cfg.sweep.causal,
                    "batch_size": cfg.sweep.batch_size,
                    "warmup": cfg.sweep.warmup,
                    "repeats": cfg.sweep.repeats,
                }
            )
        for seq_len in cfg.sweep.accuracy_seq_lens:
            points.append(
                shared
                | {
                    "probe": "accuracy",
                    "seq_len": seq_len,
                    "task": task | {"seq_len": seq_len},
                    "optim": OmegaConf.to_container(cfg.optim, resolve=True),
                    "seed": cfg.seed,
                }
            )
    return points


def device_for(hardware: DictConfig) -> torch.device:
    if hardware.accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("unsupported: hardware=cuda but this machine has no CUDA device")
        return torch.device("cuda")
    return torch.device("cpu")


def run_point(cfg: DictConfig, point: dict[str, Any]) -> dict[str, Any]:
    """Measure one point; every failure comes back as a status and message."""
    name = point["attention"]["name"]
    try:
        device = device_for(cfg.hardware)  # threads were set once for the whole job in run_sweep
        if point["probe"] == "speed":
            if point["causal"] and not variants.get(name).supports_causal:
                raise variants.UnsupportedError(f"causal unsupported by {name!r}")
            return {"status": "ok"} | measure_speed(
                threads=cfg.hardware.threads,
                timeout_s=cfg.sweep.get("point_timeout_s"),
                model_cfg=point["model"],
                attention=point["attention"],
                seq_len=point["seq_len"],
                batch_size=point["batch_size"],
                causal=point["causal"],
                device=device,
                precision=cfg.hardware.precision,
                warmup=point["warmup"],
                repeats=point["repeats"],
                seed=cfg.seed,
            )
        run_cfg = cfg.copy()
        with open_dict(run_cfg):
            run_cfg.attention = point["attention"]
            run_cfg.task.seq_len = point["seq_len"]
        result = run_training(run_cfg)
        result.pop("loss_trace", None)
        return result
    except Exception as error:  # a failed point is a result, never the end of the sweep
        return {
            "status": classify_failure(error),
            "message": (str(error) if isinstance(error, PointFailed) else f"{type(error).__name__}: {error}")[:500],
            "traceback": traceback.format_exc(limit=3)[-2000:],
        }


def log_to_wandb(cfg: DictConfig, record: dict[str, Any], sweep_id: str) -> None:
    """One wandb run per point, grouped per sweep; offline unless wandb.mode=online."""
    os.environ.setdefault("WANDB_SILENT", "true")  # one progress line per point is enough
    import wandb

    metrics = {k: v for k, v in record.items() if isinstance(v, int | float) and not isinstance(v, bool)}
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


def results_table(results_dir: Path) -> pd.DataFrame:
    frame = store.load_frame(results_dir)
    if frame.empty:
        return frame
    columns = [c for c in RESULT_COLUMNS if c in frame.columns]
    return frame[columns].sort_values(["probe", "variant", "seq_len"]).reset_index(drop=True)


def run_sweep(cfg: DictConfig) -> pd.DataFrame:
    """Run every point not yet in the store; returns the store's results table."""
    attentions = attention_list(cfg)
    validate(cfg, attentions)
    results_dir = Path(cfg.results_dir)
    with open_dict(cfg):  # the threads this job really uses, so they are part of every point's identity
        cfg.hardware.threads = launch.threads_per_job(
            cfg.hardware.threads, launch.hydra_launcher(), launch.available_cpus()
        )
    torch.set_num_threads(cfg.hardware.threads)
    points = plan_points(cfg, attentions)
    done = set() if cfg.force else store.done_keys(results_dir)
    sweep_id = cfg.sweep_id or launch.multirun_id() or dt.datetime.now(dt.UTC).strftime("sweep-%Y%m%d-%H%M%S")
    fixed_context = context.collect(cfg)
    started = time.perf_counter()
    measured = 0
    for index, point in enumerate(points, start=1):
        key = store.point_key(point)
        label = f"{point['attention']['name']} {point['probe']} n={point['seq_len']} on {cfg.hardware.name}"
        if key in done:
            print(f"[{index}/{len(points)}] {label}: already in the store, skipped", file=sys.stderr)
            continue
        remaining = len(points) - index + 1
        eta = f"{(time.perf_counter() - started) / measured * remaining:.0f}s" if measured else "?"
        print(f"[{index}/{len(points)}] {label} (ETA {eta})", file=sys.stderr, flush=True)
        point_start = time.perf_counter()
        result = run_point(cfg, point)
        measured += 1
        record = (
            {
                "key": key,
                "sweep_id": sweep_id,
                "variant": point["attention"]["name"],
                "hparams": {k: v for k, v in point["attention"].items() if k != "name"},
                "hardware": cfg.hardware.name,
                "probe": point["probe"],
                "seq_len": point["seq_len"],
                "task": cfg.task._target_.rsplit(".", 1)[-1] if point["probe"] == "accuracy" else None,
                "point_wall_s": time.perf_counter() - point_start,
                "config": point,
                "finished_at": dt.datetime.now(dt.UTC).isoformat(),
            }
            | fixed_context
            | result
        )
        store.write_point(results_dir, record)
        if cfg.logger == "wandb":
            log_to_wandb(cfg, record, sweep_id)
        print(f"    -> {record['status']}", file=sys.stderr, flush=True)
    if launch.in_multirun():
        print("    (results table and report are built once the whole multirun ends)", file=sys.stderr)
        return results_table(results_dir)
    return finish(results_dir, cfg.report_dir)


def finish(results_dir: Path, report_dir: str | None) -> pd.DataFrame:
    """Write the store's results table and, if ``report_dir`` is set, the report; returns the table."""
    table = results_table(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(results_dir / "results_table.csv", index=False)
    if report_dir and not table.empty:
        report.build_report(report.flat_results(store.read_records(results_dir)), Path(report_dir))
    return table


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    for key in ("results_dir", "report_dir"):  # every job of a multirun writes to the same folders
        cfg[key] = launch.absolute(cfg[key])
    cfg.wandb.dir = launch.absolute(cfg.wandb.dir)
    try:
        table = run_sweep(cfg)
    except ConfigError as error:
        sys.exit(f"config error: {error}")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.to_string(index=False))
    print(f"\nresults: {cfg.results_dir} (table: results_table.csv)")
    if cfg.report_dir and not launch.in_multirun():
        print(f"report: {Path(cfg.report_dir) / 'report.md'}")


if __name__ == "__main__":
    main()
