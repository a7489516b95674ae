"""Run a sweep: every planned point not yet in the store, each recorded the moment it finishes.

The console shows one line per point: its place in the sweep, what it is,
its result and an estimate of the time left; then where the results and the
report are.
"""

from __future__ import annotations

import datetime as dt
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig, open_dict

from runners.hydra_glue import launch
from runners.measure.failures import PointFailed
from runners.reporting.markdown import build_report
from runners.reporting.tables import flat_results
from runners.results import context, store
from runners.results.table import results_table
from runners.sweeping.estimate import estimate_seconds
from runners.sweeping.execute import device_for, measure_point
from runners.sweeping.plan import attention_list, plan_points, validate
from runners.sweeping.wandb_log import log_to_wandb


def point_label(point: dict[str, Any]) -> str:
    """What a point is, in a few words: variant, probe, length (and task, direction, seed, lr)."""
    label = f"{point['attention']['name']} {point['probe']} n={point['seq_len']}"
    if point["probe"] == "accuracy":
        label += f" {point['task_name']} {point['direction']} seed={point['seed']} lr={point['optim']['lr']:g}"
    return label


def describe(record: dict[str, Any]) -> str:
    """The point's result in a few words, for its progress line."""
    if record["status"] != "ok":
        return f"{record['status']}: {str(record.get('message', ''))[:100]}"
    if record["probe"] == "maps":
        errors = ", ".join(f"{case} {e:.3g}" for case, e in record["maps_summary"].items() if e is not None)
        return f"output error vs exact: {errors}"
    if record["probe"] == "decode":
        return (
            f"decode {record['decode_tokens_per_s']:,.0f} tok/s, state {record['state_bytes'] / 2**20:,.2f} MiB "
            f"(prompt {record['prefill_ms']:,.0f} ms)"
        )
    if record["probe"] == "speed":
        return (
            f"train {record['train_tokens_per_s']:,.0f} tok/s, infer {record['infer_tokens_per_s']:,.0f} tok/s, "
            f"peak {record['peak_memory_mib']:,.1f} MiB"
        )
    return f"test acc {record['test_acc']:.3f} ({record['steps']} steps)"


def eta_seconds(remaining: list[str], seconds_by_probe: dict[str, list[float]]) -> float | None:
    """Time left: each remaining point at the median time of its probe kind so far (None before any)."""
    every = [s for times in seconds_by_probe.values() for s in times]
    if not every:
        return None
    fallback = statistics.median(every)
    return sum(statistics.median(seconds_by_probe.get(probe) or [fallback]) for probe in remaining)


def print_estimate(points: list[dict[str, Any]], cfg: DictConfig) -> None:
    """The sweep's expected duration, before it starts (``sweep.estimate=true``)."""
    try:
        device = device_for(cfg.hardware)
    except PointFailed as failed:
        print(f"no duration estimate: {failed}", file=sys.stderr)
        return
    print(f"estimating the duration of {len(points)} points ...", end="", file=sys.stderr, flush=True)
    started = time.perf_counter()
    seconds, measured = estimate_seconds(points, device=device)
    accuracy = [p for p in points if p["probe"] == "accuracy"]
    steps = sum(p["optim"]["max_steps"] for p in accuracy)
    print(
        f" about {seconds / 3600:.1f} h ({seconds / 60:.0f} min): {len(accuracy)} training runs, {steps:,} steps "
        f"in all, and {len(points) - len(accuracy)} speed points; from {measured} step times measured here in "
        f"{time.perf_counter() - started:.0f} s",
        file=sys.stderr,
        flush=True,
    )


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
    done = set() if cfg.force else {r.get("key") for r in store.read_records(results_dir)}
    sweep_id = cfg.sweep_id or launch.multirun_id() or dt.datetime.now(dt.UTC).strftime("sweep-%Y%m%d-%H%M%S")
    fixed_context = context.collect(cfg)
    keys = [store.point_key(point) for point in points]
    if cfg.sweep.estimate:
        print_estimate([p for p, k in zip(points, keys, strict=True) if k not in done], cfg)
    seconds_by_probe: dict[str, list[float]] = {}
    for index, (point, key) in enumerate(zip(points, keys, strict=True), start=1):
        label = f"[{index}/{len(points)}] {point_label(point)}"
        if key in done:
            print(f"{label}: in the store, skipped", file=sys.stderr, flush=True)
            continue
        print(f"{label} ...", end="", file=sys.stderr, flush=True)
        started = time.perf_counter()
        result = measure_point(cfg, point, progress=f"{label} ...")
        elapsed = time.perf_counter() - started
        seconds_by_probe.setdefault(point["probe"], []).append(elapsed)
        record = (
            {
                "key": key,
                "sweep_id": sweep_id,
                "variant": point["attention"]["name"],
                "hparams": {k: v for k, v in point["attention"].items() if k != "name"},
                "hardware": cfg.hardware.name,
                "probe": point["probe"],
                "seq_len": point["seq_len"],
                "task": point.get("task_name"),
                "direction": point.get("direction"),
                "seed": point.get("seed"),
                "lr": point["optim"]["lr"] if "optim" in point else None,
                "point_wall_s": elapsed,
                "config": point,
                "finished_at": dt.datetime.now(dt.UTC).isoformat(),
            }
            | fixed_context
            | result
        )
        store.write_point(results_dir, record)
        if cfg.logger == "wandb":
            log_to_wandb(cfg, record, sweep_id)
        to_do = [p["probe"] for p, k in zip(points[index:], keys[index:], strict=True) if k not in done]
        left = eta_seconds(to_do, seconds_by_probe)
        eta = f"; ETA {left / 60:.1f} min" if left else ""
        print(f" {describe(record)} ({elapsed:.0f} s{eta})", file=sys.stderr, flush=True)
    if launch.in_multirun():
        return results_table(results_dir)  # the launching process builds one report once every job is done
    return finish(results_dir, cfg.report_dir, baselines=cfg.sweep.get("baselines") or [])


def finish(results_dir: Path, report_dir: str | None, *, baselines: list[str]) -> pd.DataFrame:
    """Write the store's results table and, if ``report_dir`` is set, the report; returns the table."""
    table = results_table(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(results_dir / "results_table.csv", index=False)
    if report_dir and not table.empty:
        build_report(flat_results(store.read_records(results_dir)), Path(report_dir), baselines=baselines)
    return table
