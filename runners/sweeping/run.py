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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig, open_dict

from runners.checks import check_writable
from runners.hydra_glue import launch
from runners.measure.failures import PointFailed
from runners.measure.worker import Job, run_concurrently
from runners.reporting import accuracy as acc_tables
from runners.reporting.markdown import build_report
from runners.reporting.recall import recall_runs, recall_stats, reference_below_bar
from runners.reporting.styles import REFERENCE
from runners.reporting.tables import flat_results
from runners.results import context, store
from runners.results.table import results_table
from runners.sweeping import rounds
from runners.sweeping.estimate import estimate_parts
from runners.sweeping.execute import accuracy_job, device_for, failed_record, measure_point
from runners.sweeping.plan import (
    TIMED_PROBES,
    TRAINING_PROBES,
    accuracy_jobs,
    attention_list,
    plan_points,
    timing_settings,
    validate,
)
from runners.sweeping.wandb_log import log_to_wandb


def point_label(point: dict[str, Any]) -> str:
    """What a point is, in a few words: variant, probe, length (and task, direction, seed, lr)."""
    label = f"{point['attention']['name']} {point['probe']} n={point['seq_len']}"
    if point["probe"] == "cross_speed":
        label += f" target={point['target_len']}"
    if point["probe"] in TRAINING_PROBES:
        label += f" {point['task_name']} {point['direction']} seed={point['seed']} lr={point['optim']['lr']:g}"
        label += f" {point['state_knob']}" if "state_knob" in point else ""
    if point["probe"] == "speed" and point["causal"]:
        label += " causal"
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
            f"(prompt {record['prefill_ms']:,.0f} ms){paired(record, 'decode_tokens_per_s')}"
        )
    if record["probe"] == "cross_decode":
        return (
            f"decode {record['decode_tokens_per_s']:,.0f} tok/s, cross state {record['cross_state_bytes'] / 2**20:,.2f}"
            f" MiB (encoding the source {record['prefill_ms']:,.0f} ms){paired(record, 'decode_tokens_per_s')}"
        )
    if record["probe"] == "cross_accuracy":
        return (
            f"test acc {record['test_acc']:.3f}, exact match {record['test_exact_match']:.3f} ({record['steps']} steps)"
        )
    if record["probe"] in ("speed", "cross_speed"):
        return (
            f"train {record['train_tokens_per_s']:,.0f} tok/s, infer {record['infer_tokens_per_s']:,.0f} tok/s, "
            f"peak {record['peak_memory_mib']:,.1f} MiB{paired(record, 'train_tokens_per_s')}"
        )
    if "test_bpb" in record:  # language modelling on text: bits per byte, on far recall hits and other bytes
        return (
            f"test {record['test_bpb']:.3f} bits/byte (far hits {record.get('test_bpb_far', float('nan')):.3f}, "
            f"other {record['test_bpb_other']:.3f}; unigram {record['unigram_entropy_bits']:.2f}) "
            f"({record['steps']} steps)"
        )
    return f"test acc {record['test_acc']:.3f} ({record['steps']} steps)"


def paired(record: dict[str, Any], metric: str) -> str:
    """', 1.78x full (1.70-1.85), 3 rounds' for a point timed in rounds ('' for one measured alone)."""
    if "rounds" not in record:
        return ""
    ratio = ""
    if record.get(f"{metric}_ratio") is not None and record.get("ratio_reference") != record["variant"]:
        lo, hi = record[f"{metric}_ratio_lo"], record[f"{metric}_ratio_hi"]
        ratio = f", {record[f'{metric}_ratio']:.2f}x {record['ratio_reference']} ({lo:.2f}-{hi:.2f})"
    flag = ", UNSTABLE" if record.get("unstable") else ""
    return f"{ratio}, {record['rounds']} rounds{flag}"


def eta_seconds(
    remaining: list[str], seconds_by_probe: dict[str, list[float]], *, accuracy_jobs: int = 1
) -> float | None:
    """Time left: each remaining point at the median time of its probe kind so far (None before any).

    Accuracy runs going ``accuracy_jobs`` at a time take that share of their summed time.
    """
    every = [s for times in seconds_by_probe.values() for s in times]
    if not every:
        return None
    fallback = statistics.median(every)
    return sum(
        statistics.median(seconds_by_probe.get(probe) or [fallback])
        / (accuracy_jobs if probe in TRAINING_PROBES else 1)
        for probe in remaining
    )


def print_estimate(points: list[dict[str, Any]], cfg: DictConfig) -> None:
    """The sweep's expected duration, before it starts (``sweep.estimate=true``)."""
    try:
        device = device_for(cfg.hardware)
    except PointFailed as failed:
        print(f"no duration estimate: {failed}", file=sys.stderr)
        return
    print(f"estimating the duration of {len(points)} points ...", end="", file=sys.stderr, flush=True)
    started = time.perf_counter()
    once, per_round, measured = estimate_parts(points, device=device, accuracy_jobs=accuracy_jobs(cfg))
    timing = timing_settings(cfg)
    low, high = (once + count * per_round for count in (timing.rounds, timing.max_rounds))
    accuracy = [p for p in points if p["probe"] in TRAINING_PROBES]
    steps = sum(p["optim"]["max_steps"] for p in accuracy)
    hours = f"{low / 3600:.1f}-{high / 3600:.1f} h, " if high >= 3600 else ""
    print(
        f" about {hours}{low / 60:.0f}-{high / 60:.0f} min ({timing.rounds} timing "
        f"rounds, up to {timing.max_rounds} where intervals are wide): {len(accuracy)} training runs, {steps:,} "
        f"steps in all, and {len(points) - len(accuracy)} timed points; from {measured} step times measured here "
        f"in {time.perf_counter() - started:.0f} s",
        file=sys.stderr,
        flush=True,
    )


class RecordWriter:
    """Builds a point's record (its identity, config, context and result) and writes it to the store at once."""

    def __init__(self, cfg: DictConfig, results_dir: Path, sweep_id: str, fixed_context: dict[str, Any]) -> None:
        self.cfg, self.results_dir, self.sweep_id, self.fixed_context = cfg, results_dir, sweep_id, fixed_context

    def __call__(
        self,
        point: dict[str, Any],
        key: str,
        result: dict[str, Any],
        elapsed: float,
        *,
        concurrent_runs: int = 1,
        log: bool = True,
    ) -> dict[str, Any]:
        """Write the record (``log``: to wandb too; off for a timed point's records before its last round)."""
        record = (
            {
                "key": key,
                "sweep_id": self.sweep_id,
                "variant": point["attention"]["name"],
                "hparams": {k: v for k, v in point["attention"].items() if k != "name"},
                "hardware": self.cfg.hardware.name,
                "probe": point["probe"],
                "seq_len": point["seq_len"],
                "task": point.get("task_name"),
                "direction": point.get("direction"),
                "seed": point.get("seed"),
                "lr": point["optim"]["lr"] if "optim" in point else None,
                "point_wall_s": elapsed,
                "concurrent_runs": concurrent_runs,  # >1: its wall-clock times were taken beside other runs
                "config": point,
                "finished_at": dt.datetime.now(dt.UTC).isoformat(),
            }
            | self.fixed_context
            | result
        )
        store.write_point(self.results_dir, record)
        if log and self.cfg.logger == "wandb":
            log_to_wandb(self.cfg, record, self.sweep_id)
        return record


class Progress:
    """The end of a point's console line: its result, its time and the time left."""

    def __init__(self, probes: list[str], jobs: int) -> None:
        self.remaining = list(probes)
        self.jobs = jobs
        self.seconds_by_probe: dict[str, list[float]] = {}

    def done(self, record: dict[str, Any]) -> str:
        self.seconds_by_probe.setdefault(record["probe"], []).append(record["point_wall_s"])
        self.remaining.remove(record["probe"])
        left = eta_seconds(self.remaining, self.seconds_by_probe, accuracy_jobs=self.jobs)
        eta = f"; ETA {left / 60:.1f} min" if left else ""
        return f"{describe(record)} ({record['point_wall_s']:.0f} s{eta})"


def train_side_by_side(
    todo: list[tuple[str, dict[str, Any], str]], jobs: int, record: RecordWriter, progress: Progress
) -> None:
    """The accuracy points, ``jobs`` training runs at a time, each in a worker process; each recorded as it ends."""
    if not todo:
        return
    threads = todo[0][1]["hardware"]["threads"]
    print(f"{len(todo)} training runs, {jobs} at a time ({threads} threads each) ...", file=sys.stderr, flush=True)
    start_times: dict[str, float] = {}
    by_key = {key: (label, point) for label, point, key in todo}

    def started_in_order() -> Iterator[tuple[str, Job]]:
        for _, point, key in todo:
            start_times[key] = time.perf_counter()
            yield key, accuracy_job(point)

    for key, outcome in run_concurrently(started_in_order(), max_jobs=jobs):
        label, point = by_key[key]
        result = failed_record(outcome) if isinstance(outcome, Exception) else outcome
        written = record(point, key, result, time.perf_counter() - start_times[key], concurrent_runs=jobs)
        print(f"{label}: {progress.done(written)}", file=sys.stderr, flush=True)


def comparisons(
    points: list[dict[str, Any]], keys: list[str], todo: list[tuple[str, dict[str, Any], str]]
) -> list[list[tuple[str | None, dict[str, Any], str]]]:
    """The timed points to measure, by comparison (:func:`rounds.comparison_key`), in plan order.

    Each comparison's items are ``(label, point, key)``; the reference (``full``) of a comparison whose own record
    is already in the store is added with label None: it is timed again for the pairing, its record not rewritten.
    """
    groups: dict[str, list[tuple[str | None, dict[str, Any], str]]] = {}
    for label, point, key in todo:
        if point["probe"] in TIMED_PROBES:
            groups.setdefault(rounds.comparison_key(point), []).append((label, point, key))
    pending = {key for _, _, key in todo}
    for point, key in zip(points, keys, strict=True):
        group = groups.get(rounds.comparison_key(point)) if point["probe"] in TIMED_PROBES else None
        if group is not None and key not in pending and point["attention"]["name"] == REFERENCE:
            group.append((None, point, key))
    return list(groups.values())


def time_in_rounds(
    cfg: DictConfig,
    points: list[dict[str, Any]],
    keys: list[str],
    todo: list[tuple[str, dict[str, Any], str]],
    record: RecordWriter,
    progress: Progress,
) -> None:
    """Every timed point still to measure, in rounds over all comparisons (:func:`rounds.measure_in_rounds`);
    each point's record is written after its second round and rewritten after each later one, ``partial_rounds``
    until its last (a resumed sweep times a partial point again)."""
    settings = timing_settings(cfg)
    groups = comparisons(points, keys, todo)
    if not groups:
        return
    labels = {key: label for group in groups for label, _, key in group if label is not None}
    timing = [
        rounds.Comparison([rounds.Member(key, point, write=key in labels) for _, point, key in group])
        for group in groups
    ]
    print(
        f"timing {len(labels)} point(s) of {len(groups)} comparison(s), in rounds that go over all of them "
        f"({settings.rounds}, up to {settings.max_rounds} where an interval is wider than {settings.max_spread:.0%})",
        file=sys.stderr,
        flush=True,
    )
    state = {"round": 0, "memory": False}
    finished: list[str] = []  # the progress lines of points whose last round ended, shown as the round line ends

    def end_round_line() -> None:
        if state["round"]:
            print(file=sys.stderr, flush=True)
        for line in finished:
            print(line, file=sys.stderr, flush=True)
        finished.clear()

    def what(comparison: rounds.Comparison) -> str:
        first = comparison.members[0].point
        return f"{first['probe']} n={first['seq_len']}" + (" causal" if first.get("causal") else "")

    def on_prepared(comparison: rounds.Comparison) -> None:
        measured = [m for m in comparison.members if m.memory]
        if not measured:
            return
        if not state["memory"]:
            print("memory, one process per point:", end="", file=sys.stderr, flush=True)
            state["memory"] = True
        print(
            f" {what(comparison)} ({len(measured)}, {comparison.seconds:.0f} s)", end=",", file=sys.stderr, flush=True
        )

    def on_round(index: int, comparison: rounds.Comparison, timed: int) -> None:
        if index != state["round"]:
            if state["memory"] and not state["round"]:
                print(file=sys.stderr, flush=True)
            end_round_line()
            state["round"] = index
            print(f"round {index}:", end="", file=sys.stderr, flush=True)
        print(f" {what(comparison)}" + (f" ({timed})" if timed > 1 else ""), end=",", file=sys.stderr, flush=True)

    def on_results(comparison: rounds.Comparison, final: bool) -> None:
        if not final and comparison.rounds_run < 2:  # one round has no interval yet: nothing worth keeping
            return
        written = [m for m in comparison.members if m.write]
        elapsed = comparison.seconds / max(1, len(written))
        results = comparison.results(settings)
        for member in written:
            result = results[member.key] | {"partial_rounds": not final}
            stored = record(member.point, member.key, result, elapsed, log=final)
            if final:
                finished.append(f"{labels[member.key]} ... {progress.done(stored)}")

    rounds.measure_in_rounds(cfg, timing, settings, on_round=on_round, on_results=on_results, on_prepared=on_prepared)
    end_round_line()


def run_sweep(cfg: DictConfig) -> pd.DataFrame:
    """Run every point not yet in the store; returns the store's results table."""
    attentions = attention_list(cfg)
    validate(cfg, attentions)
    results_dir = Path(cfg.results_dir)
    check_writable(results_dir, key="results_dir")  # a store that cannot be written fails now, not after a point
    if cfg.report_dir:
        check_writable(cfg.report_dir, key="report_dir")
    with open_dict(cfg):  # the threads this job really uses, so they are part of every point's identity
        cfg.hardware.threads = launch.threads_per_job(
            cfg.hardware.threads, launch.hydra_launcher(), launch.available_cpus()
        )
    torch.set_num_threads(cfg.hardware.threads)
    points = plan_points(cfg, attentions)
    stored = [] if cfg.force else store.read_records(results_dir)
    done = {r.get("key") for r in stored if not r.get("partial_rounds")}  # a partial point is timed again
    sweep_id = cfg.sweep_id or launch.multirun_id() or dt.datetime.now(dt.UTC).strftime("sweep-%Y%m%d-%H%M%S")
    fixed_context = context.collect(cfg)
    keys = [store.point_key(point) for point in points]
    if cfg.sweep.estimate:
        print_estimate([p for p, k in zip(points, keys, strict=True) if k not in done], cfg)
    jobs = accuracy_jobs(cfg)
    todo = []
    for index, (point, key) in enumerate(zip(points, keys, strict=True), start=1):
        if key in done:
            print(f"[{index}/{len(points)}] {point_label(point)}: in the store, skipped", file=sys.stderr, flush=True)
        else:
            todo.append((f"[{index}/{len(points)}] {point_label(point)}", point, key))
    progress = Progress([point["probe"] for _, point, _ in todo], jobs)
    record = RecordWriter(cfg, results_dir, sweep_id, fixed_context)
    time_in_rounds(cfg, points, keys, todo, record, progress)
    side_by_side = jobs > 1 and sum(point["probe"] in TRAINING_PROBES for _, point, _ in todo) > 1
    for label, point, key in todo:
        if point["probe"] in TIMED_PROBES or (side_by_side and point["probe"] in TRAINING_PROBES):
            continue
        print(f"{label} ...", end="", file=sys.stderr, flush=True)
        started = time.perf_counter()
        result = measure_point(cfg, point, progress=f"{label} ...")
        written = record(point, key, result, time.perf_counter() - started)
        print(f" {progress.done(written)}", file=sys.stderr, flush=True)
    if side_by_side:
        train_side_by_side([item for item in todo if item[1]["probe"] in TRAINING_PROBES], jobs, record, progress)
    if launch.in_multirun():
        return results_table(results_dir)  # the launching process builds one report once every job is done
    return finish(results_dir, cfg.report_dir, baselines=cfg.sweep.get("baselines") or [])


def finish(results_dir: Path, report_dir: str | None, *, baselines: list[str]) -> pd.DataFrame:
    """Write the store's results table and, if ``report_dir`` is set, the report; returns the table."""
    table = results_table(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(results_dir / "results_table.csv", index=False)
    if table.empty:
        return table
    frame = flat_results(store.read_records(results_dir))
    warn_unlearned(frame)
    if report_dir:
        build_report(frame, Path(report_dir), baselines=baselines)
    return table


def warn_unlearned(frame: pd.DataFrame) -> None:
    """Say at the end of a sweep where exact attention did not learn an accuracy setting (the report says it too)."""
    accuracy = frame[(frame.probe == "accuracy") & (frame.status != "unsupported")]
    at_state_sizes = recall_runs(accuracy)  # judged per state size and number of pairs
    accuracy = accuracy.drop(index=at_state_sizes.index)
    lines = []
    if not accuracy.empty:
        lines.append(acc_tables.unlearned_line(acc_tables.accuracy_stats(acc_tables.at_chosen_lr(accuracy)), REFERENCE))
    if not at_state_sizes.empty:
        lines.append(reference_below_bar(recall_stats(at_state_sizes)))
    for line in filter(None, lines):
        print("warning: " + line.replace("**", ""), file=sys.stderr, flush=True)
