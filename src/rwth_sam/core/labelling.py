"""Rules for writing masks into a user's labels: never overwrite another label unless asked to."""

from __future__ import annotations

import numpy as np


def writable(current: np.ndarray, value: int, overwrite: bool) -> np.ndarray:
    """Which voxels, now holding ``current``, may take ``value``: all, or only background and ``value``."""
    if overwrite:
        return np.ones(current.shape, dtype=bool)
    return (current == 0) | (current == value)


def next_instance_id(labels: np.ndarray) -> int:
    """A label value no object of ``labels`` uses yet (instance mode: one id per submitted object)."""
    return int(labels.max(initial=0)) + 1
