"""Measure one point of a sweep; whatever goes wrong comes back as the point's status, never an exception."""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

import variants
from runners.approximation.probe import maps_probe
from runners.measure.cross_probe import cross_state_bytes
from runners.measure.decode_probe import decoding_state_bytes
from runners.measure.failures import PointFailed, classify_failure, failure_message
from runners.measure.worker import Job, measure_isolated, run_isolated
from runners.sweeping.plan import TIMED_PROBES
from runners.training.run import run_training
from variants._registry import cannot_cross, cannot_decode

SPEED_PROBE = "runners.measure.speed_probe:speed_probe"
DECODE_PROBE = "runners.measure.decode_probe:decode_probe"
CROSS_SPEED_PROBE = "runners.measure.cross_probe:cross_speed_probe"
CROSS_DECODE_PROBE = "runners.measure.cross_probe:cross_decode_probe"


def device_for(hardware: DictConfig) -> str:
    """The torch device of a hardware config; a CUDA config on a machine without CUDA is unsupported."""
    if hardware.accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise PointFailed("unsupported", "hardware=cuda but this machine has no CUDA device")
        return "cuda"
    return "cpu"


@dataclass(frozen=True)
class TimedCall:
    """How a timed point is measured: the probe and its arguments, and whether a memory process goes beside it.

    The sweep times it in rounds (:mod:`runners.sweeping.rounds`): ``parts=["time"]`` once per round in a
    fresh process, the FLOP count with the first round, the memory part (speed probes) once on its own.
    """

    function: str
    kwargs: dict[str, Any]
    threads: int
    timeout_s: float
    memory: bool


def timed_call(cfg: DictConfig, point: dict[str, Any]) -> TimedCall:
    """The timed probe of a speed, decode or cross point; raises for a point its variant cannot do (unsupported)."""
    probe, name = point["probe"], point["attention"]["name"]
    threads, timeout = cfg.hardware.threads, cfg.sweep.point_timeout_s
    if probe == "speed":
        if point["causal"] and not variants.get(name).supports_causal:
            raise variants.UnsupportedError(f"causal unsupported by {name!r}")
        kwargs = {
            "model_cfg": point["model"],
            "attention": point["attention"],
            "seq_len": point["seq_len"],
            "batch_size": point["batch_size"],
            "causal": point["causal"],
            "device": device_for(cfg.hardware),
            "precision": cfg.hardware.precision,
            "warmup": point["warmup"],
            "repeats": point["repeats"],
            "min_time_s": point.get("min_time_s", 0.0),
            "seed": 0,  # initialization only; the speed of a step does not depend on it
        }
        return TimedCall(SPEED_PROBE, kwargs, threads, timeout, memory=True)
    if probe == "decode":
        if not variants.get(name).supports_decoding:  # recorded as unsupported without starting a process
            raise cannot_decode(name)
        kwargs = {
            "model_cfg": point["model"],
            "attention": point["attention"],
            "context": point["seq_len"],
            "batch_size": point["batch_size"],
            "device": device_for(cfg.hardware),
            "warmup": point["warmup"],
            "repeats": point["repeats"],
        }
        return TimedCall(DECODE_PROBE, kwargs, decode_threads(cfg), timeout, memory=False)
    if probe == "cross_speed":
        kwargs = cross_probe_kwargs(cfg, point) | {
            "target_len": point["target_len"],
            "precision": cfg.hardware.precision,
            "min_time_s": point.get("min_time_s", 0.0),
        }
        return TimedCall(CROSS_SPEED_PROBE, kwargs, threads, timeout, memory=True)
    if probe == "cross_decode":
        return TimedCall(CROSS_DECODE_PROBE, cross_probe_kwargs(cfg, point), decode_threads(cfg), timeout, memory=False)
    raise ValueError(f"{probe!r} is not a timed probe")


def decode_threads(cfg: DictConfig) -> int:
    """Threads of a decode point: ``sweep.decode_threads`` (default 1), at most the hardware's.

    One token of a small model is a chain of tiny kernels; split over two threads each kernel waits for the
    other thread, whose availability on a shared VM is what made decode points differ 2x between runs.
    """
    wanted = int(OmegaConf.select(cfg, "sweep.decode_threads", default=1) or 0)
    available = int(cfg.hardware.threads or 0)
    return min(wanted, available) if wanted and available else wanted or available


def check_cross(name: str) -> None:
    """A cross point of a variant that cannot cross-attend is recorded as unsupported, naming those that can."""
    if not variants.get(name).supports_cross:
        raise cannot_cross(name)


def cross_probe_kwargs(cfg: DictConfig, point: dict[str, Any]) -> dict[str, Any]:
    """What both encoder-decoder probes take from a cross point: the model, its two attentions, the source."""
    check_cross(point["attention"]["name"])
    return {
        "model_cfg": point["model"],
        "self_attention": point["self_attention"],
        "attention": point["attention"],
        "source_len": point["seq_len"],
        "batch_size": point["batch_size"],
        "device": device_for(cfg.hardware),
        "warmup": point["warmup"],
        "repeats": point["repeats"],
    }


def train_point(point: dict[str, Any], progress: str | None = None) -> dict[str, Any]:
    """A training run of the point's variant on the point's task, direction, seed, rate and hardware (its threads).

    A ``cross_accuracy`` point trains the encoder-decoder with the variant as its cross-attention and
    ``self_attention`` everywhere else; its record keeps the cross state's bytes for the source's length.
    """
    device_for(OmegaConf.create(point["hardware"]))
    run = {key: point[key] for key in ("attention", "model", "task", "optim", "seed", "hardware")}
    cross = point["probe"] == "cross_accuracy"
    if cross:
        check_cross(point["attention"]["name"])
        run |= {"attention": point["self_attention"], "cross_attention": point["attention"]}
    result = run_training(OmegaConf.create(run), progress=progress)
    result.pop("loss_trace", None)
    if result.get("status") != "ok":
        return result
    if cross:
        result["cross_state_bytes"] = cross_state_bytes(
            model_cfg=point["model"], attention=point["attention"], source_len=point["seq_len"]
        )
    elif variants.get(point["attention"]["name"]).supports_decoding:
        result["state_bytes"] = decoding_state_bytes(
            model_cfg=point["model"], attention=point["attention"], seq_len=point["seq_len"]
        )
    return result


def accuracy_job(point: dict[str, Any]) -> Job:
    """The point's training run as a worker job, for running several side by side (``sweep.accuracy_jobs``)."""
    return Job("runners.sweeping.execute:train_point", {"point": point}, threads=point["hardware"]["threads"])


def failed_record(error: BaseException) -> dict[str, Any]:
    """The result of a point that failed: its status, message and where it failed."""
    return {
        "status": classify_failure(error),
        "message": failure_message(error),
        "traceback": getattr(error, "traceback", None) or "".join(traceback.format_exception(error, limit=3))[-2000:],
    }


def measure_maps(point: dict[str, Any]) -> dict[str, Any]:
    """Errors against exact attention, budget curve and heatmaps (a property of the config, measured in-process)."""
    return maps_probe(
        attention=point["attention"], model=point["model"], seq_len=point["seq_len"], settings=point["approximation"]
    )


def measure_point(cfg: DictConfig, point: dict[str, Any], progress: str | None = None) -> dict[str, Any]:
    """The point's measurements with ``status``; a failure is a result with its status and message.

    ``progress``: the point's console line, which a long training run extends with its step count.
    """
    try:
        if point["probe"] in TIMED_PROBES:  # one point alone; the sweep times a length's points in rounds together
            call = timed_call(cfg, point)
            if not call.memory:
                return {"status": "ok"} | run_isolated(
                    call.function, call.kwargs, threads=call.threads, timeout_s=call.timeout_s, malloc="timing"
                )
            return {"status": "ok"} | measure_isolated(
                call.function, call.kwargs, threads=call.threads, timeout_s=call.timeout_s
            )
        if point["probe"] == "maps":
            return {"status": "ok"} | measure_maps(point)
        return train_point(point, progress)  # in this process: one run at a time, with its progress line
    except Exception as error:  # a failed point is a result, never the end of the sweep
        return failed_record(error)
