"""Name -> class registry: the one way docs, tests and runners find variants."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from variants._base import (
    FAMILIES,
    Attention,
    HyperparameterError,
    UnknownVariantError,
    UnsupportedError,
)

_REGISTRY: dict[str, type[Attention]] = {}
_COMMON_ARGS = frozenset({"self", "heads", "dim_head", "max_seq_len", "causal", "dropout", "cross"})


def register(name: str) -> Callable[[type[Attention]], type[Attention]]:
    """Class decorator: ``@variants.register("name")`` adds an Attention subclass."""

    def decorator(cls: type[Attention]) -> type[Attention]:
        if not (isinstance(cls, type) and issubclass(cls, Attention)):
            raise TypeError(f"@register({name!r}) expects a subclass of variants.Attention, got {cls!r}")
        existing = _REGISTRY.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            owner = f"{existing.__module__}.{existing.__qualname__}"
            raise ValueError(f"variant name {name!r} is already registered by {owner}")
        if cls.family not in FAMILIES:
            raise ValueError(f"variant {name!r}: family {cls.family!r} is unknown; families: {', '.join(FAMILIES)}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def unregister(name: str) -> None:
    """Remove a variant (for tests that register throwaway ones)."""
    _REGISTRY.pop(name, None)


def names() -> list[str]:
    """Registered variant names, sorted."""
    return sorted(_REGISTRY)


def get(name: str) -> type[Attention]:
    """The class registered under ``name``; a clear error lists the valid names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownVariantError(f"unknown attention variant {name!r}; registered: {', '.join(names())}") from None


def causal_names() -> list[str]:
    """Names of the variants that can run causally."""
    return [n for n in names() if _REGISTRY[n].supports_causal]


def decoding_names() -> list[str]:
    """Names of the variants that can decode token by token (``init_state``/``step``)."""
    return [n for n in names() if _REGISTRY[n].supports_decoding]


def cross_names() -> list[str]:
    """Names of the variants that can attend from one sequence over another of a different length."""
    return [n for n in names() if _REGISTRY[n].supports_cross]


def cannot_decode(name: str) -> UnsupportedError:
    """The error for decoding with a variant that cannot, naming those that can."""
    return UnsupportedError(f"{name} cannot decode token by token; variants that can: {', '.join(decoding_names())}")


def cannot_cross(name: str) -> UnsupportedError:
    """The error for cross-attention with a variant that cannot, naming those that can."""
    return UnsupportedError(
        f"{name!r} cannot attend across two sequences (cross-attention); variants that can: {', '.join(cross_names())}"
    )


def hyperparameters(name: str) -> dict[str, Any]:
    """The variant's own hyperparameters and their defaults (beyond the common ones)."""
    params = inspect.signature(get(name).__init__).parameters
    return {
        p.name: (None if p.default is inspect.Parameter.empty else p.default)
        for p in params.values()
        if p.name not in _COMMON_ARGS and p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def build(
    name: str,
    *,
    heads: int,
    dim_head: int,
    max_seq_len: int | None,
    causal: bool = False,
    dropout: float = 0.0,
    cross: bool = False,
    **hparams: Any,
) -> Attention:
    """A ready module of variant ``name``; bad requests fail here with a clear message.

    ``cross=True``: cross-attention, queries of one sequence over the keys and values of another (of
    another length), never causal here: a decoder's query sees the whole source.
    """
    cls = get(name)
    if cross and not cls.supports_cross:
        raise cannot_cross(name)
    if cross and causal:
        raise UnsupportedError(
            f"{name!r}: cross-attention here is not causal (each query sees the whole source); build it with "
            "causal=False"
        )
    if causal and not cls.supports_causal:
        raise UnsupportedError(f"{name!r} cannot be causal; variants that can: {', '.join(causal_names())}")
    if dropout and not cls.supports_dropout:
        can = ", ".join(n for n in names() if _REGISTRY[n].supports_dropout)
        raise UnsupportedError(
            f"{name!r} cannot apply attention dropout (dropout={dropout}); build it with dropout=0 "
            f"(model.attn_dropout=0) or use a variant that can: {can}"
        )
    if cls.needs_max_seq_len and max_seq_len is None:
        raise UnsupportedError(f"{name!r} needs a fixed max_seq_len; pass max_seq_len=<longest sequence>")
    accepted = hyperparameters(name)
    unknown = sorted(set(hparams) - set(accepted))
    if unknown:
        allowed = ", ".join(f"{k}={v!r}" for k, v in accepted.items()) or "none"
        raise HyperparameterError(f"unknown hyperparameter(s) {unknown} for {name!r}; it accepts: {allowed}")
    common = {"cross": True} if cross else {}  # a variant's own __init__ may predate the keyword
    return cls(
        heads=heads, dim_head=dim_head, max_seq_len=max_seq_len, causal=causal, dropout=dropout, **common, **hparams
    )
