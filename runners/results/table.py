"""The flat results table of a store: one row per point, the columns a reader scans first."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from runners.results import store

RESULT_COLUMNS = [
    "variant",
    "hardware",
    "probe",
    "seq_len",
    "status",
    "train_tokens_per_s",
    "infer_tokens_per_s",
    "peak_memory_mib",
    "flops_per_step",
    "test_acc",
]


def results_table(results_dir: Path) -> pd.DataFrame:
    """The store's points as a table sorted by probe, variant and length (empty if the store is)."""
    records = store.read_records(results_dir)
    if not records:
        return pd.DataFrame(columns=RESULT_COLUMNS)
    frame = pd.json_normalize(records)
    columns = [c for c in RESULT_COLUMNS if c in frame.columns]
    return frame[columns].sort_values(["probe", "variant", "seq_len"]).reset_index(drop=True)
