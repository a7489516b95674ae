"""Long-range tasks generated from a seed inside the project (nothing is downloaded)."""

from tasks.data import MQAR, TASKS, GeneratedTask, ListOps, SelectiveCopy

__all__ = ["MQAR", "TASKS", "GeneratedTask", "ListOps", "SelectiveCopy"]
