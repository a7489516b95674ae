"""The shared Transformer skeleton that every attention variant plugs into."""

from models.transformer import Transformer, masked_mean, sinusoidal_table

__all__ = ["Transformer", "masked_mean", "sinusoidal_table"]
