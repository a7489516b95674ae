"""A sweep is a list of points: variant x sequence length x probe, on one hardware config.

Variants: the one ``attention=`` selects and the baselines ``sweep.baselines``
(default ``[full]``), or every registered one. Speed points: every variant at
every ``sweep.seq_lens``, in each direction of ``sweep.causal`` (a flag or a
list). Decode points: every variant at every ``sweep.decode_lens`` (prompt lengths; variants that cannot decode get an
``unsupported`` record). Maps points (``sweep.maps``):
every variant at every ``sweep.maps_lens``, against exact attention. Accuracy points: every
variant on every entry of ``sweep.accuracy`` (a label -> ``task`` (default: the
label), ``seq_lens``, ``directions`` and any task argument), at every length, in every direction
the task offers (a variant that cannot be causal gets an ``unsupported`` record
for the causal direction and is scored bidirectionally), for every seed of
``sweep.seeds`` and every learning rate of ``sweep.lrs`` (null: ``optim.lr``).
An entry's ``hparams`` (variant -> hyperparameters) apply to its runs only.

Cross points (``sweep.cross``, the encoder-decoder): the variant is the
decoder's cross-attention and ``sweep.cross.self_attention`` (default
``full``) every self-attention, one pattern at a time as in CAB. Speed points
at every ``source_lens`` (a target of ``target_len``), decode points at every
``decode_lens``, and the runs of every sequence-to-sequence entry of
``sweep.accuracy`` (``sort``). A variant that cannot cross-attend gets an
``unsupported`` record there.

Points are ordered by what they measure: speed and decode points first (timed,
one at a time with every thread), then maps, then the accuracy runs, which
``sweep.accuracy_jobs`` may run side by side (each with its share of the
threads, recorded in the point's ``hardware.threads``): their accuracy is a
property of the config, the load of the machine does not change it.

Each point is a plain dict of everything that defines it (not the
measurements); its hash is its identity in the store, so an interrupted sweep
resumes where it stopped and changed settings are measured anew. Timed points
(``TIMED_PROBES``) also hold the machine (:mod:`runners.results.machine`):
a second machine writing into the same store measures its own, while
accuracy and maps points, which no machine changes, are reused.
"""

from __future__ import annotations

import itertools
from typing import Any, NamedTuple

from omegaconf import DictConfig, OmegaConf

import variants
from runners.checks import ConfigError, check_model, check_optim, check_range, check_seeds, instantiate_task
from runners.hydra_glue.configs import TASKS, attention_config, keyword_defaults, task_config
from runners.measure.bf16 import check_precision
from runners.results import machine

DIRECTIONS = ("bidirectional", "causal")


class AccuracyEntry(NamedTuple):
    """One checked entry of ``sweep.accuracy``."""

    label: str
    task: str
    seq_lens: list[int]
    directions: list[str]
    settings: dict[str, Any]  # task arguments
    optim: dict[str, Any]  # overrides of the optim config for this entry
    model: dict[str, Any]  # overrides of the model config for this entry
    hparams: dict[str, dict[str, Any]]  # variant -> hyperparameters it takes for this entry


def attention_list(cfg: DictConfig) -> list[dict[str, Any]]:
    """The selected variant (``attention=``) or variants (``sweep.variants``), and the baselines (``sweep.baselines``).

    Each with its default hyperparameters, except the selection's overrides. A baseline is planned at the
    same points as the selection, so a report compares whatever was selected with exact attention (without
    it, a ``sweep.variants`` list that leaves ``full`` out had no ratios at all).
    """
    if cfg.get("attention") is None:
        chosen = [attention_config(name) for name in sweep_variants(cfg)]
    else:
        chosen = [OmegaConf.to_container(cfg.attention, resolve=True)]
    for name in OmegaConf.select(cfg, "sweep.baselines", default=None) or []:  # runners.maps has no sweep
        try:
            baseline = attention_config(name)
        except variants.UnknownVariantError as error:
            raise ConfigError(f"sweep.baselines: {error}") from None
        if baseline not in chosen:
            chosen.append(baseline)
    return chosen


def sweep_variants(cfg: DictConfig) -> list[str]:
    """The variants of a sweep without ``attention=``: ``sweep.variants`` is ``all`` (every registered one),
    ``decoding`` (every one that can decode token by token: a state to put beside accuracy) or a list of names."""
    chosen = OmegaConf.select(cfg, "sweep.variants", default="all")
    if chosen in (None, "all"):
        return variants.names()
    if chosen == "decoding":
        return variants.decoding_names()
    if isinstance(chosen, str) or not all(isinstance(name, str) for name in chosen):
        raise ConfigError(
            f"sweep.variants={chosen!r}: use all, decoding or a list of names; registered: "
            f"{', '.join(variants.names())}"
        )
    unknown = [name for name in chosen if name not in variants.names()]
    if unknown:
        raise ConfigError(f"sweep.variants: unknown {unknown}; registered: {', '.join(variants.names())}")
    return list(chosen)


MODEL_KNOBS = ("model.dim",)  # state knobs of the skeleton; any other knob is a hyperparameter of the variant


class StateSize(NamedTuple):
    """One variant's entry of ``sweep.state_sizes``: the knob, its values, and hyperparameters held fixed."""

    knob: str
    values: list[int]
    fixed: dict[str, Any]


def state_sizes(cfg: DictConfig) -> dict[str, StateSize]:
    """``sweep.state_sizes``: per variant, the knob that sets its decoding state and the values to train at.

    A knob is ``model.dim`` (the width: attention's KV cache and linear attention's summary grow with it)
    or one of the variant's hyperparameters (``window``, ``feature_dim``, ``nb_features``), given as a list;
    other hyperparameters given as single values are held fixed (Based's window while its feature dimension
    moves). Each accuracy point of the variant is planned once per value (Zoology's and Based's sweep).
    """
    raw = OmegaConf.select(cfg, "sweep.state_sizes", default=None)
    sizes = OmegaConf.to_container(raw, resolve=True) if raw is not None else {}
    checked = {}
    for name, spec in sizes.items():
        if name not in variants.names():
            raise ConfigError(f"sweep.state_sizes: unknown variant {name!r}; registered: {', '.join(variants.names())}")
        example = "e.g. {window: [16, 32, 64]}; other hyperparameters as single values"
        spec = spec if isinstance(spec, dict) else {}
        knobs = [key for key, value in spec.items() if isinstance(value, list)]
        if len(knobs) != 1:
            raise ConfigError(f"sweep.state_sizes.{name}: one knob with a list of values, {example}")
        knob, values = knobs[0], spec[knobs[0]]
        fixed = {key: value for key, value in spec.items() if key != knob}
        allowed = [*MODEL_KNOBS, *variants.hyperparameters(name)]
        for key in (knob, *fixed):
            if key not in allowed or (key in MODEL_KNOBS and key != knob):
                raise ConfigError(f"sweep.state_sizes.{name}: unknown knob {key!r}; {name} has {allowed}")
        if not values or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in values):
            raise ConfigError(f"sweep.state_sizes.{name}.{knob} must be a list of positive integers; got {values}")
        checked[name] = StateSize(knob, list(values), fixed)
    return checked


def with_state_size(point: dict[str, Any], size: StateSize, value: int) -> dict[str, Any]:
    """The point with its state knob set, labelled ``state_knob`` (e.g. ``window=32``) for the report."""
    attention = point["attention"] | size.fixed
    model = point["model"]
    if size.knob in MODEL_KNOBS:
        model = model | {size.knob.removeprefix("model."): value}
    else:
        attention = attention | {size.knob: value}
    return point | {"attention": attention, "model": model, "state_knob": f"{size.knob.removeprefix('model.')}={value}"}


def task_directions(name: str) -> tuple[str, ...]:
    """The directions task ``name`` can be trained in: both if it takes ``causal``, else its fixed one."""
    cls = TASKS[name]
    if "causal" in keyword_defaults(cls):
        return DIRECTIONS
    return ("causal",) if cls.causal else ("bidirectional",)


def accuracy_tasks(cfg: DictConfig) -> list[AccuracyEntry]:
    """The entries of ``sweep.accuracy``, checked."""
    entries = []
    for label, entry in (cfg.sweep.get("accuracy") or {}).items():
        if entry is None:  # an inheriting preset removed its parent's entry
            continue
        settings = OmegaConf.to_container(entry, resolve=True)
        name = settings.pop("task", label)
        if name not in TASKS:
            raise ConfigError(f"sweep.accuracy.{label}: unknown task {name!r}; tasks: {', '.join(TASKS)}")
        seq_lens = list(settings.pop("seq_lens", []))
        optim, model = settings.pop("optim", {}), settings.pop("model", {})
        hparams = entry_hparams(label, settings.pop("hparams", None) or {})
        for group, overrides, known in (("optim", optim, cfg.optim), ("model", model, cfg.model)):
            unknown_keys = sorted(set(overrides) - set(known))
            if unknown_keys:
                raise ConfigError(
                    f"sweep.accuracy.{label}.{group}: unknown key(s) {unknown_keys}; {group} has {list(known)}"
                )
        possible = task_directions(name)
        directions = list(settings.pop("directions", possible))
        wrong = [d for d in directions if d not in possible]
        if wrong:
            raise ConfigError(
                f"sweep.accuracy.{label}.directions: {wrong} not possible; {name} can be: {list(possible)}"
            )
        owned = {"seq_len", "causal", "seed"} & settings.keys()
        if owned:
            raise ConfigError(
                f"sweep.accuracy.{label}: {sorted(owned)} are set per point by the sweep; use seq_lens, directions "
                "and sweep.seeds instead"
            )
        arguments = keyword_defaults(TASKS[name])
        unknown = sorted(set(settings) - set(arguments))
        if unknown:
            raise ConfigError(
                f"sweep.accuracy.{label}: unknown task argument(s) {unknown}; "
                f"it takes task, seq_lens, directions, optim, model, hparams and {sorted(arguments)}"
            )
        entries.append(AccuracyEntry(label, name, seq_lens, directions, settings, optim, model, hparams))
    return entries


def entry_hparams(label: str, hparams: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """An entry's ``hparams``: variant -> hyperparameters for its runs (Linformer's k below a short length)."""
    for name, values in hparams.items():
        if name not in variants.names():
            raise ConfigError(
                f"sweep.accuracy.{label}.hparams: unknown variant {name!r}; registered: {', '.join(variants.names())}"
            )
        own = variants.hyperparameters(name)
        unknown = sorted(set(values or {}) - set(own))
        if not isinstance(values, dict) or unknown:
            raise ConfigError(f"sweep.accuracy.{label}.hparams.{name}: give a mapping of {sorted(own)}; got {values}")
    return {name: dict(values) for name, values in hparams.items()}


def is_seq2seq(entry: AccuracyEntry) -> bool:
    """A sequence-to-sequence task: its runs compare the cross-attention (``sweep.cross``), not the self-attention."""
    return bool(TASKS[entry.task].seq2seq)


class CrossSettings(NamedTuple):
    """``sweep.cross``: the encoder-decoder points, where only the cross-attention is the variant (CAB's fourth
    pattern: non-causal cross)."""

    self_attention: dict[str, Any]  # the encoder's and the decoder's self-attention of every cross point
    source_lens: list[int]  # speed and memory: a training step over a source of M tokens ...
    target_len: int  # ... and a target of N tokens
    decode_lens: list[int]  # decoding: one target token over a source of M tokens


def cross_settings(cfg: DictConfig) -> CrossSettings:
    """``sweep.cross``, checked; null or missing: no cross speed or decode points, exact self-attention."""
    raw = OmegaConf.select(cfg, "sweep.cross", default=None)
    given = OmegaConf.to_container(raw, resolve=True) if raw is not None else {}
    known = set(CrossSettings._fields)
    unknown = sorted(set(given) - known)
    if unknown:
        raise ConfigError(f"sweep.cross: unknown key(s) {unknown}; it has {sorted(known)}")
    name = given.get("self_attention") or "full"
    try:
        self_attention = attention_config(name) if isinstance(name, str) else attention_config(name["name"]) | name
    except (variants.UnknownVariantError, KeyError, TypeError):
        raise ConfigError(
            f"sweep.cross.self_attention={name!r}: give a variant's name or a mapping with its name; "
            f"variants that can be causal and decode: {', '.join(variants.decoding_names())}"
        ) from None
    if not variants.get(self_attention["name"]).supports_decoding:
        raise ConfigError(
            f"sweep.cross.self_attention={self_attention['name']!r} cannot decode, and the decoder generates token "
            f"by token (greedy test, decode points); choose one of {', '.join(variants.decoding_names())}"
        )
    lens = {key: list(given.get(key) or []) for key in ("source_lens", "decode_lens")}
    target_len = given.get("target_len", 128)
    for key, values in {**lens, "target_len": [target_len]}.items():
        if any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in values):
            raise ConfigError(f"sweep.cross.{key} must be positive integers; got {given.get(key)}")
    return CrossSettings(self_attention, lens["source_lens"], target_len, lens["decode_lens"])


def point_task(name: str, settings: dict[str, Any], seq_len: int, direction: str, seed: int) -> dict[str, Any]:
    """The task config of one accuracy point: the task's defaults, the sweep's settings, length, direction, seed."""
    task = task_config(name) | settings | {"seq_len": seq_len, "seed": seed}
    if "causal" in task:
        task["causal"] = direction == "causal"
    return task


def speed_directions(cfg: DictConfig) -> list[bool]:
    """The causal flags of the speed points: ``sweep.causal`` is one flag or a list of them ([false, true]: both).

    Both directions let the report pair a causal accuracy setting with causal speed at the same length.
    """
    value = cfg.sweep.causal
    flags = list(value) if OmegaConf.is_list(value) or isinstance(value, list | tuple) else [value]
    if not flags or any(not isinstance(flag, bool) for flag in flags) or len(set(flags)) < len(flags):
        raise ConfigError(
            f"sweep.causal must be true, false or a list of distinct ones like [false, true]; got {value}"
        )
    return flags


def validate(cfg: DictConfig, attentions: list[dict[str, Any]]) -> None:
    """Fail fast on bad values: unknown variants, hyperparameters or tasks, empty or bad lengths."""
    tasks = accuracy_tasks(cfg)
    accuracy_lens = [n for entry in tasks for n in entry.seq_lens]
    for key, lens in (("sweep.seq_lens", list(cfg.sweep.seq_lens)), ("sweep.accuracy.*.seq_lens", accuracy_lens)):
        if any(not isinstance(n, int) or n < 1 for n in lens):
            raise ConfigError(f"{key} must be positive integers; got {lens}")
    maps_on = cfg.sweep.get("maps") and cfg.sweep.maps_lens
    cross = cross_settings(cfg)
    lengths = [cfg.sweep.seq_lens, accuracy_lens, maps_on, cfg.sweep.get("decode_lens")]
    if not any([*lengths, cross.source_lens, cross.decode_lens]):
        raise ConfigError(
            "sweep.seq_lens, sweep.maps_lens, sweep.decode_lens, sweep.cross's lengths and every "
            "sweep.accuracy.*.seq_lens are empty: nothing to measure"
        )
    if accuracy_lens and not cfg.sweep.seeds:
        raise ConfigError("sweep.seeds is empty: accuracy points need at least one seed")
    check_seeds(cfg.sweep.seeds)
    model = OmegaConf.to_container(cfg.model, resolve=True)
    check_model(model)
    for entry in tasks:
        if entry.model:
            check_model(model | entry.model, where=f"sweep.accuracy.{entry.label}.model")
    if accuracy_lens:  # the optimizer of every training run: the base config, each entry's overrides, each rate
        optim = OmegaConf.to_container(cfg.optim, resolve=True)
        for lr in cfg.sweep.get("lrs") or []:
            check_range("sweep.lrs[*]", lr, low=0.0, low_inclusive=False)
        for entry in tasks:
            check_optim(
                optim | entry.optim, where="optim" if not entry.optim else f"sweep.accuracy.{entry.label}.optim"
            )
    for entry in tasks:
        for n in entry.seq_lens:
            for direction in entry.directions:  # a bad value or combination (more queries than fit, ...) fails here
                task = point_task(entry.task, entry.settings, n, direction, seed=0)
                instantiate_task(task, where=f"sweep.accuracy.{entry.label} at seq_len={n}")
    maps_lens = list(cfg.sweep.maps_lens) if cfg.sweep.get("maps") else []
    if maps_lens:
        maps_settings(cfg)
    if any(not isinstance(n, int) or n < 1 for n in maps_lens):
        raise ConfigError(f"sweep.maps_lens must be positive integers; got {maps_lens}")
    if maps_lens and max(maps_lens) > cfg.approximation.trained.max_seq_len:
        raise ConfigError(
            f"sweep.maps_lens={maps_lens} go beyond approximation.trained.max_seq_len="
            f"{cfg.approximation.trained.max_seq_len}; raise it or shorten the lengths"
        )
    decode_lens = list(cfg.sweep.get("decode_lens") or [])
    if any(not isinstance(n, int) or n < 1 for n in decode_lens):
        raise ConfigError(f"sweep.decode_lens must be positive integers; got {decode_lens}")
    if decode_lens and min(cfg.sweep.decode_batch_size, cfg.sweep.decode_repeats) < 1:
        raise ConfigError("sweep.decode_batch_size and sweep.decode_repeats must be >= 1")
    longest = max([*cfg.sweep.seq_lens, *accuracy_lens, *maps_lens, *decode_lens])
    for attention in attentions:
        hparams = {k: v for k, v in attention.items() if k != "name"}
        try:
            variants.build(
                attention["name"], heads=1, dim_head=8, max_seq_len=longest, dropout=cfg.model.attn_dropout, **hparams
            )
        except variants.AttentionError as error:
            raise ConfigError(f"attention config {attention}: {error}") from None
    check_cross_builds(attentions, tasks, cross)
    speed_directions(cfg)
    if cfg.sweep.repeats < 1 or cfg.sweep.batch_size < 1:
        raise ConfigError("sweep.repeats and sweep.batch_size must be >= 1")
    if cfg.hardware.strategy == "ddp" and cfg.hardware.devices != 1 and accuracy_lens:
        raise ConfigError(
            "hardware.strategy=ddp relaunches this script once per device, and each copy would run the whole "
            "sweep; inside a sweep use hardware.strategy=ddp_spawn (or train one config with "
            "python -m runners.train hardware.strategy=ddp)"
        )
    accuracy_jobs(cfg)  # its range
    for name, (knob, values, fixed) in state_sizes(cfg).items():  # every value must build
        for value in values:
            if knob == "model.dim" and cfg.model.dim_head is None and value % cfg.model.heads:
                raise ConfigError(
                    f"sweep.state_sizes.{name}.model.dim={value} is not a multiple of model.heads={cfg.model.heads}"
                )
            hparams = fixed if knob in MODEL_KNOBS else fixed | {knob: value}
            try:
                variants.build(name, heads=1, dim_head=8, max_seq_len=longest, **hparams)
            except variants.AttentionError as error:
                raise ConfigError(f"sweep.state_sizes.{name}.{knob}={value}: {error}") from None
    timing_settings(cfg)
    min_time_s(cfg)
    check_precision(cfg.hardware)
    if cfg.logger not in ("wandb", "none"):
        raise ConfigError(f"logger={cfg.logger!r} is unknown; choose wandb or none")


def check_cross_builds(attentions: list[dict[str, Any]], tasks: list[AccuracyEntry], cross: CrossSettings) -> None:
    """Every cross-capable variant builds as cross-attention at the sweep's sources (a variant that cannot
    cross-attend is recorded as unsupported there, not refused), and every entry's hparams build."""
    seq2seq_lens = [n for entry in tasks if is_seq2seq(entry) for n in entry.seq_lens]
    longest = max([*cross.source_lens, *cross.decode_lens, *seq2seq_lens], default=1)
    checks = []
    if cross.source_lens or cross.decode_lens or seq2seq_lens:
        checks += [(attention, True, longest, "attention config") for attention in attentions]
    for entry in tasks:
        where, entry_longest = f"sweep.accuracy.{entry.label}.hparams", max(entry.seq_lens, default=1)
        for name, values in entry.hparams.items():
            checks.append(({"name": name} | values, is_seq2seq(entry), entry_longest, where))
    for attention, as_cross, max_seq_len, where in checks:
        hparams = {k: v for k, v in attention.items() if k != "name"}
        if as_cross and not variants.get(attention["name"]).supports_cross:
            continue
        try:
            variants.build(attention["name"], heads=1, dim_head=8, max_seq_len=max_seq_len, cross=as_cross, **hparams)
        except variants.AttentionError as error:
            raise ConfigError(f"{where} {attention}: {error}") from None


class TimingSettings(NamedTuple):
    """``sweep.timing``: rounds per comparison, the cap on extra rounds, and the widest interval accepted."""

    rounds: int
    max_rounds: int
    max_spread: float


def timing_settings(cfg: DictConfig) -> TimingSettings:
    """``sweep.timing``, checked (missing keys: 3 rounds, at most 6, intervals up to 10% wide)."""
    raw = OmegaConf.select(cfg, "sweep.timing", default=None)
    given = OmegaConf.to_container(raw, resolve=True) if raw is not None else {}
    unknown = sorted(set(given) - set(TimingSettings._fields))
    if unknown:
        raise ConfigError(f"sweep.timing: unknown key(s) {unknown}; it has {list(TimingSettings._fields)}")
    settings = TimingSettings(
        rounds=given.get("rounds", 3), max_rounds=given.get("max_rounds", 6), max_spread=given.get("max_spread", 0.1)
    )
    check_range("sweep.timing.rounds", settings.rounds, integer=True, low=1)
    check_range("sweep.timing.max_rounds", settings.max_rounds, integer=True, low=settings.rounds)
    check_range("sweep.timing.max_spread", settings.max_spread, low=0.0, low_inclusive=False)
    return settings


def min_time_s(cfg: DictConfig) -> float:
    """``sweep.min_time_s``: the least time a speed point's timed steps add up to in each process (0: none)."""
    value = OmegaConf.select(cfg, "sweep.min_time_s", default=0.0)
    check_range("sweep.min_time_s", value, low=0.0)
    return float(value)


def accuracy_jobs(cfg: DictConfig) -> int:
    """How many accuracy runs go side by side: ``sweep.accuracy_jobs``, at most one per thread; 1 under DDP.

    A DDP run already uses one process per device, and a job of a parallel launcher has only its share of the CPUs.
    """
    wanted = OmegaConf.select(cfg, "sweep.accuracy_jobs", default=1)
    check_range("sweep.accuracy_jobs", wanted, integer=True, low=1)
    if cfg.hardware.devices != 1 or str(cfg.hardware.strategy).startswith("ddp"):
        return 1
    return max(1, min(wanted, int(cfg.hardware.threads or 1)))


def maps_settings(cfg: DictConfig) -> dict[str, Any]:
    """Settings of the sweep's maps points: conf/approximation updated with ``sweep.maps_settings``."""
    settings = OmegaConf.to_container(cfg.approximation, resolve=True)
    overrides = OmegaConf.to_container(cfg.sweep.get("maps_settings") or OmegaConf.create({}), resolve=True)
    unknown = sorted(set(overrides) - set(settings))
    if unknown:
        raise ConfigError(f"sweep.maps_settings: unknown key(s) {unknown}; conf/approximation has {sorted(settings)}")
    return settings | overrides


PROBE_ORDER = ("speed", "cross_speed", "decode", "cross_decode", "maps", "accuracy", "cross_accuracy")
TRAINING_PROBES = ("accuracy", "cross_accuracy")  # training runs, which may go side by side
# Their numbers are the machine's: these points carry the machine in their identity, so each machine measures
# its own. The others (accuracy, maps) are properties of the config and seeds, shared by every machine.
TIMED_PROBES = ("speed", "cross_speed", "decode", "cross_decode")


def corpus_identity(entry: AccuracyEntry) -> dict[str, Any]:
    """``{"data": ...}``: the corpus digest, files and bytes of a task read from files (``text``), else nothing.

    Part of the point's identity: the same entry over another corpus (or another Python's standard library)
    is another point, never a resumed one.
    """
    if not hasattr(TASKS[entry.task], "identity"):
        return {}
    task = point_task(entry.task, entry.settings, entry.seq_lens[0], entry.directions[0], seed=0)
    return {"data": instantiate_task(task, where=f"sweep.accuracy.{entry.label}").identity()}


def cross_points(cfg: DictConfig, cross: CrossSettings) -> list[dict[str, Any]]:
    """The encoder-decoder's speed and decode points of one variant (as its cross-attention), without the variant."""
    fixed = {"self_attention": cross.self_attention}
    speed = {"batch_size": cfg.sweep.batch_size, "warmup": cfg.sweep.warmup, "repeats": cfg.sweep.repeats}
    speed["min_time_s"] = min_time_s(cfg)
    decode = {
        "batch_size": cfg.sweep.decode_batch_size,
        "warmup": cfg.sweep.decode_warmup,
        "repeats": cfg.sweep.decode_repeats,
    }
    return [
        *(
            fixed | speed | {"probe": "cross_speed", "seq_len": n, "target_len": cross.target_len}
            for n in cross.source_lens
        ),
        *(fixed | decode | {"probe": "cross_decode", "seq_len": n} for n in cross.decode_lens),
    ]


def plan_points(cfg: DictConfig, attentions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every point of the sweep with the config that identifies it: timed probes first, accuracy last."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    hardware = OmegaConf.to_container(cfg.hardware, resolve=True)
    optim = OmegaConf.to_container(cfg.optim, resolve=True)
    rates = list(cfg.sweep.lrs) if cfg.sweep.get("lrs") else [optim["lr"]]
    tasks = accuracy_tasks(cfg)
    sizes = state_sizes(cfg)
    cross = cross_settings(cfg)
    jobs = accuracy_jobs(cfg)
    training_hardware = hardware | {"threads": max(1, int(hardware["threads"] or 1) // jobs)} if jobs > 1 else hardware
    points = []
    for attention in attentions:
        shared = {"attention": attention, "model": model, "hardware": hardware}
        for causal, seq_len in itertools.product(speed_directions(cfg), cfg.sweep.seq_lens):
            points.append(
                shared
                | {
                    "probe": "speed",
                    "seq_len": seq_len,
                    "causal": causal,
                    "batch_size": cfg.sweep.batch_size,
                    "warmup": cfg.sweep.warmup,
                    "repeats": cfg.sweep.repeats,
                    "min_time_s": min_time_s(cfg),
                }
            )
        for seq_len in cfg.sweep.get("decode_lens") or []:
            points.append(
                shared
                | {
                    "probe": "decode",
                    "seq_len": seq_len,
                    "batch_size": cfg.sweep.decode_batch_size,
                    "warmup": cfg.sweep.decode_warmup,
                    "repeats": cfg.sweep.decode_repeats,
                }
            )
        points += [shared | point for point in cross_points(cfg, cross)]
        if cfg.sweep.get("maps"):
            settings = maps_settings(cfg)
            for seq_len in cfg.sweep.maps_lens:
                points.append(shared | {"probe": "maps", "seq_len": seq_len, "approximation": settings})
        size = sizes.get(attention["name"])
        values = size.values if size else [None]
        for entry in tasks:
            data = corpus_identity(entry)
            with_hparams = attention | entry.hparams.get(attention["name"], {})
            kind = {"probe": "accuracy"}
            if is_seq2seq(entry):  # the variant is the cross-attention; the rest is sweep.cross.self_attention
                kind = {"probe": "cross_accuracy", "self_attention": cross.self_attention}
            for seq_len in entry.seq_lens:
                for direction in entry.directions:
                    for seed, lr, value in itertools.product(cfg.sweep.seeds, rates, values):
                        point = (
                            shared
                            | kind
                            | {
                                "attention": with_hparams,
                                "hardware": training_hardware,
                                "seq_len": seq_len,
                                "task_name": entry.task,
                                "direction": direction,
                                "task": point_task(entry.task, entry.settings, seq_len, direction, seed),
                                "optim": optim | entry.optim | {"lr": lr},
                                "model": model | entry.model,
                                "seed": seed,
                            }
                            | data
                        )
                        points.append(point if size is None else with_state_size(point, size, value))
    identity = machine.machine_identity(cfg.hardware.accelerator)
    points = [point | {"machine": identity} if point["probe"] in TIMED_PROBES else point for point in points]
    return sorted(points, key=lambda point: PROBE_ORDER.index(point["probe"]))  # stable: variant order kept
