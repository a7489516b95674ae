"""Registry of attention variants that plug into one Transformer skeleton.

Add a variant by dropping one module file into this folder::

    import variants

    @variants.register("mine")
    class Mine(variants.Attention):
        supports_causal = True

        def attend(self, q, k, v, mask):
            ...

Every public module here (name not starting with ``_``) is imported on
``import variants``, so the new name shows up in :func:`variants.names`.
"""

from variants._base import (
    FAMILIES,
    Attention,
    AttentionError,
    HyperparameterError,
    State,
    UnknownVariantError,
    UnsupportedError,
    check_range,
)
from variants._discovery import discover
from variants._registry import (
    build,
    causal_names,
    cross_names,
    decoding_names,
    get,
    hyperparameters,
    names,
    register,
    unregister,
)

__all__ = [
    "FAMILIES",
    "Attention",
    "AttentionError",
    "HyperparameterError",
    "State",
    "UnknownVariantError",
    "UnsupportedError",
    "build",
    "causal_names",
    "check_range",
    "cross_names",
    "decoding_names",
    "discover",
    "get",
    "hyperparameters",
    "names",
    "register",
    "unregister",
]

discover()
