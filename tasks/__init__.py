"""Long-range tasks generated from a seed inside the project (nothing is downloaded).

One file per task: its generator and its LightningDataModule. ``task=NAME`` in
a Hydra command selects one (configs generated from the classes' signatures,
:mod:`runners.hydra_glue.configs`).
"""

from tasks._base import IGNORE, PAD, GeneratedTask
from tasks.listops import ListOps
from tasks.lookup import Lookup
from tasks.mqar import MQAR
from tasks.selective_copy import SelectiveCopy
from tasks.sort import Sort
from tasks.text import Text

__all__ = ["IGNORE", "MQAR", "PAD", "GeneratedTask", "ListOps", "Lookup", "SelectiveCopy", "Sort", "Text"]
