"""Rules for writing masks into a user's labels: never overwrite another label unless asked to."""

from __future__ import annotations

import numpy as np


def writable_pixels(current: np.ndarray, mask: np.ndarray, value: int, overwrite: bool) -> np.ndarray:
    """The pixels of ``mask`` that may take ``value``: all of them, or only background and ``value``."""
    if overwrite:
        return mask
    return mask & ((current == 0) | (current == value))


def next_instance_id(labels: np.ndarray) -> int:
    """A label value no object of ``labels`` uses yet (instance mode: one id per submitted object)."""
    return int(labels.max(initial=0)) + 1
