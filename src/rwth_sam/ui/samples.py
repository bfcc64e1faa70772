"""npe2 sample data: the synthetic battery cell, as a volume and as one slice, with its truth labels (marked as
a reference, never the widget's default target) and an empty labels layer for the user's results."""

from __future__ import annotations

import numpy as np

from rwth_sam.core.phantom import CLASS_NAMES, battery_phantom

REFERENCE_LABELS = "rwth_sam_reference"  # metadata key of labels to compare with, not to write into


def _layers(image, labels):
    truth = {
        "name": "battery phantom truth",
        "visible": False,
        "features": _features(),
        "metadata": {REFERENCE_LABELS: True},
    }
    return [
        (image, {"name": "battery phantom", "contrast_limits": (0, 255)}, "image"),
        (labels, truth, "labels"),
        (np.zeros(labels.shape, dtype=np.uint32), {"name": "battery phantom labels"}, "labels"),
    ]


def _features():
    return {"index": [0, *CLASS_NAMES], "class": ["background", *CLASS_NAMES.values()]}


def battery_volume():
    return _layers(*battery_phantom())


def battery_slice():
    image, labels = battery_phantom(shape=(1, 384, 384))
    return _layers(image[0], labels[0])
