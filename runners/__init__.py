"""Entry points: ``python -m runners.sweep`` (main job)."""
