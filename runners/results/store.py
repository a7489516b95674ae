"""Results store: one JSON file per point, written atomically.

One file per point (named by the point's config hash plus a host/process
suffix) means several processes and machines can write into one folder at
once without clobbering each other, and an interrupted sweep loses at most
the point in flight. A file that cannot be parsed is skipped with a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import warnings
from pathlib import Path
from typing import Any


def point_key(identity: dict[str, Any]) -> str:
    """Stable short hash of what defines a point (config, not measurements)."""
    blob = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def write_point(results_dir: Path, record: dict[str, Any]) -> Path:
    """Atomically write one record; returns its path."""
    points = Path(results_dir) / "points"
    points.mkdir(parents=True, exist_ok=True)
    writer = f"{socket.gethostname()}-{os.getpid()}"
    final = points / f"{record['key']}--{writer}.json"
    tmp = points / f".{final.name}.tmp"
    tmp.write_text(json.dumps(record, default=str) + "\n")
    os.replace(tmp, final)  # atomic on POSIX: readers see the old file or the whole new one
    return final


def read_records(results_dir: Path) -> list[dict[str, Any]]:
    """Every readable record in the store; corrupt files are skipped with a warning."""
    records = []
    for path in sorted((Path(results_dir) / "points").glob("*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as error:
            warnings.warn(f"skipping unreadable result file {path}: {error}", stacklevel=2)
    return records
