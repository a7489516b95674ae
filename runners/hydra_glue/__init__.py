"""Hydra glue: generated config options, launcher facts inside a job, and the after-multirun callback."""
