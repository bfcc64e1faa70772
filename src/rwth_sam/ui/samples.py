"""npe2 sample data: the synthetic battery cell, as a volume and as one slice, with its truth labels."""

from __future__ import annotations

from rwth_sam.core.phantom import CLASS_NAMES, battery_phantom


def _layers(image, labels):
    return [
        (image, {"name": "battery phantom", "contrast_limits": (0, 255)}, "image"),
        (labels, {"name": "battery phantom truth", "visible": False, "features": _features()}, "labels"),
    ]


def _features():
    return {"index": [0, *CLASS_NAMES], "class": ["background", *CLASS_NAMES.values()]}


def battery_volume():
    return _layers(*battery_phantom())


def battery_slice():
    image, labels = battery_phantom(shape=(1, 384, 384))
    return _layers(image[0], labels[0])
