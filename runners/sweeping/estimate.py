"""How long a sweep will take, from its planned steps and step times measured here before it starts.

For each distinct training configuration (variant, length, direction, batch)
one optimizer step is timed after a warm-up (beyond 2048 tokens extrapolated
from 1024 and 2048 instead); an accuracy point costs its
``optim.max_steps`` such steps plus its validations, a speed point its warm-up
and timed steps in two worker processes. It is an estimate (data generation,
evaluation and process start-up are approximated), printed so that a long
preset such as ``sweep=lra`` says up front whether it is an hour or a day.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch

import variants
from runners.measure.speed_probe import speed_probe

PROCESS_START_S = 0.2  # forking a measuring process from the worker server (runners.measure.worker)
# Steps longer than this are not timed but extrapolated from TIMED_LENS with the growth measured between them
# (an exponent held to 1-2): timing one step of every configuration of sweep=full up to 8192 (full_math there
# holds ~20 GB) had not finished after 10 minutes on 2 cores.
TIMED_MAX_LEN = 2048
TIMED_LENS = (1024, 2048)
EXTRAPOLATED = "extrapolated"  # first element of a cache key whose step time was not timed


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the body with ``threads`` CPU threads (a side-by-side accuracy run gets its share), then restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads or before))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def step_seconds(point: dict[str, Any], *, seq_len: int, batch_size: int, causal: bool, device: str) -> float:
    """Seconds of one training step of the point's model at this length and batch, timed here with the
    point's own threads (``hardware.threads``: an accuracy run beside others gets its share)."""
    with torch_threads(point.get("hardware", {}).get("threads")):
        return _timed_step(point, seq_len=seq_len, batch_size=batch_size, causal=causal, device=device)


def _timed_step(point: dict[str, Any], *, seq_len: int, batch_size: int, causal: bool, device: str) -> float:
    result = speed_probe(
        model_cfg=point["model"],
        attention=point["attention"],
        seq_len=seq_len,
        batch_size=batch_size,
        causal=causal,
        device=device,
        warmup=1,
        repeats=1,
        parts=["time"],
    )
    return batch_size * seq_len / result["train_tokens_per_s"]


def estimate_seconds(
    points: list[dict[str, Any]], *, device: str, accuracy_jobs: int = 1, rounds: int = 1
) -> tuple[float, int]:
    """Estimated seconds for ``points`` with ``rounds`` timing rounds, and how many step times were measured.

    Accuracy runs going ``accuracy_jobs`` at a time count for that share of their summed time (an
    optimistic bound: a run with fewer threads is slower, by less than the share on small models).
    """
    once, per_round, measured = estimate_parts(points, device=device, accuracy_jobs=accuracy_jobs)
    return once + rounds * per_round, measured


def estimate_parts(points: list[dict[str, Any]], *, device: str, accuracy_jobs: int = 1) -> tuple[float, float, int]:
    """Seconds spent once (training runs, maps, memory processes), seconds per timing round, step times measured.

    A timed point's round is a process that times it and, beside it, ``full`` on the same batch (its pairing;
    ``full``'s own process times only itself): warm-up, then training and forward steps until there are
    ``repeats`` of each and ``min_time_s`` of each (a forward pass ~1/3 of a step; decoding priced as one).
    """
    cache: dict[tuple, float] = {}
    once = per_round = 0.0
    trained = False  # the maps probe trains its full-attention model once per process
    for point in points:
        if point["probe"].startswith("cross_"):  # as the encoder-decoder's self-attention over source and target
            if not variants.get(point["attention"]["name"]).supports_cross:
                continue  # recorded as unsupported without a process
            point = as_self_attention(point)
        if point["probe"] in ("speed", "decode"):
            decode = point["probe"] == "decode"
            if decode and not variants.get(point["attention"]["name"]).supports_decoding:
                continue
            shape = (point["seq_len"], point["batch_size"], True if decode else point["causal"])
            own = _cached(cache, point, shape, device)
            paired = point["attention"]["name"] != "full"
            step = own + (_cached(cache, point | {"attention": {"name": "full"}}, shape, device) if paired else 0.0)
            if decode:
                per_round += PROCESS_START_S + step / 3
                continue
            at_least = point.get("min_time_s", 0.0) * (2 if paired else 1)  # each model's steps add up to it
            training = max(point["repeats"] * step, at_least)
            forward = max(point["repeats"] * step / 3, at_least)
            per_round += PROCESS_START_S + point["warmup"] * step * 4 / 3 + training + forward
            once += PROCESS_START_S + 5 * own  # the memory process: up to 5 steps
            continue
        if point["probe"] == "maps":
            once += _maps_seconds(cache, point, device, trained=trained)
            trained = True
            continue
        task, optim = point["task"], point["optim"]
        shape = (point["seq_len"], task["batch_size"], point["direction"] == "causal")
        validations = optim["max_steps"] // optim["val_every"] + 1
        val_steps = validations * -(-task["num_val"] // task["batch_size"]) + -(-task["num_test"] // task["batch_size"])
        seconds = (optim["max_steps"] + val_steps / 3) * _cached(cache, point, shape, device)  # eval: forward only
        once += seconds / accuracy_jobs
    return once, per_round, sum(1 for key in cache if key[0] != EXTRAPOLATED)


def as_self_attention(point: dict[str, Any]) -> dict[str, Any]:
    """A cross point priced as the self-attention skeleton over source and target together (a rough bound:
    the encoder and the decoder each run ``layers`` blocks, one sequence of M + N tokens costs about as much)."""
    probe = point["probe"].removeprefix("cross_")
    length = point["seq_len"] + (point.get("target_len") or point["seq_len"])
    priced = point | {"probe": probe, "attention": point["self_attention"], "causal": False}
    return priced | {"seq_len": length} if probe != "decode" else priced


def _maps_seconds(cache: dict[tuple, float], point: dict[str, Any], device: str, *, trained: bool) -> float:
    """A maps point: forward passes reading its matrices (~1/3 of a training step each), plus the model it trains once.

    Each matrix costs ``ceil(n / dim_head)`` forward calls; there is one per input case and one per budget
    value, module seed and input kind.
    """
    settings = point["approximation"]
    model = point["model"]
    dim_head = model.get("dim_head") or model["dim"] // model["heads"]
    budget = variants.get(point["attention"]["name"]).budget
    matrices = 4 + (len(budget[1]) * len(settings["budget_seeds"]) * 2 if budget else 0)
    calls = matrices * (-(-point["seq_len"] // dim_head) + 2)
    seconds = calls * _cached(cache, point, (point["seq_len"], settings["batch"], False), device) / 3
    if not trained:
        task = settings["trained"]
        shape = (task["seq_len"], task["task_args"].get("batch_size", 64), False)
        seconds += task["steps"] * _cached(cache, point | {"attention": {"name": "full"}}, shape, device)
    return seconds


def _cached(cache: dict[tuple, float], point: dict[str, Any], shape: tuple, device: str) -> float:
    """A step's seconds, timed once per configuration; beyond ``TIMED_MAX_LEN`` extrapolated (see there)."""
    seq_len, batch_size, causal = shape
    key = (repr(point["attention"]), repr(point["model"]), point.get("hardware", {}).get("threads"), *shape)
    if seq_len > TIMED_MAX_LEN:
        key = (EXTRAPOLATED, *key)
        if key not in cache:
            half, top = (_cached(cache, point, (n, batch_size, causal), device) for n in TIMED_LENS)
            growth = math.log(top / half) / math.log(TIMED_LENS[1] / TIMED_LENS[0]) if half > 0 and top > 0 else 1.0
            cache[key] = top * (seq_len / TIMED_LENS[1]) ** min(max(growth, 1.0), 2.0)
        return cache[key]
    if key not in cache:
        try:
            cache[key] = step_seconds(point, seq_len=seq_len, batch_size=batch_size, causal=causal, device=device)
        except (variants.AttentionError, RuntimeError):  # unsupported or out of memory: (almost) free in the sweep
            cache[key] = 0.0
    return cache[key]
