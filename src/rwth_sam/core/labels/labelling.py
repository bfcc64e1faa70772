"""Rules for writing masks into a user's labels: never overwrite another label unless asked to,
never write a value the labels' dtype cannot hold, and take back only what a run itself wrote."""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from rwth_sam.core.coordinates import SlicePlane
from rwth_sam.core.errors import InputError
from rwth_sam.core.labels.disk_labels import largest_value


def writable(current: np.ndarray, value: int, overwrite: bool) -> np.ndarray:
    """Which voxels, now holding ``current``, may take ``value``: all, or only background and ``value``."""
    if overwrite:
        return np.ones(current.shape, dtype=bool)
    return (current == 0) | (current == value)


def next_instance_id(labels) -> int:
    """A label value no object of ``labels`` uses yet (instance mode: one id per submitted object)."""
    return largest_value(labels) + 1


def check_label_value(value: int, dtype: np.dtype, name: str, instance: bool = False) -> int:
    """``value`` if the labels' dtype holds it; else an ``InputError`` that says what to do."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "iub":
        raise InputError(
            f"The labels layer '{name}' holds {dtype} values, not whole numbers; pick another labels layer."
        )
    highest = 1 if dtype.kind == "b" else int(np.iinfo(dtype).max)
    if 1 <= value <= highest:
        return int(value)
    if instance:
        problem = f"has no free label id left: {highest}, the largest value {dtype} holds, is taken"
    else:
        problem = f"cannot hold label value {value}: {dtype} holds 1 to {highest}"
    raise InputError(
        f"The labels layer '{name}' {problem}. Pick a smaller value, or make a labels layer of a wider type "
        "('New labels layer for image' makes uint32)."
    )


def check_writable(array, name: str) -> None:
    """Refuse a labels array that cannot be written (a read-only numpy array or memory map)."""
    flags = getattr(array, "flags", None)
    if flags is not None and not flags.writeable:
        raise InputError(
            f"The labels layer '{name}' is read-only (its array cannot be written). "
            "Create a new labels layer, or copy this one (layer context menu: Duplicate Layer)."
        )


def _digest(section: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(section).view(np.uint8))


def _unpack(bits: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return np.unpackbits(bits, count=int(np.prod(shape))).reshape(shape).astype(bool)


@dataclass
class SliceWrite:
    """What a run changed on one slice, so that a later run can take it back.

    ``by_value``: packed bits of the voxels it set, per label value; ``overwritten``: packed bits of
    the voxels that held another label before ("Overwrite other labels"), and ``previous`` those
    labels, in row-major order. ``digest``: a checksum of the slice as the run left it. A slice
    whose checksum differs was changed since by other means (undo, the brush, fill, another plugin),
    and nobody can tell any more which of its voxels are the run's: it is left as it is.
    """

    by_value: dict[int, np.ndarray]
    overwritten: np.ndarray
    previous: np.ndarray
    digest: int

    @classmethod
    def between(cls, before: np.ndarray, after: np.ndarray) -> SliceWrite:
        changed = after != before
        overwritten = changed & (before != 0)
        by_value = {int(value): np.packbits(changed & (after == value)) for value in np.unique(after[changed])}
        return cls(by_value, np.packbits(overwritten), before[overwritten], _digest(after))

    def take_back(self, section: np.ndarray) -> bool:
        """Undo these changes in ``section`` if it is still as this run left it. Returns False when
        it was edited since and still holds some of the run's voxels (then it is left as it is); a
        slice the user undid holds none, and needs nothing."""
        if _digest(section) != self.digest:
            return not any(
                (section[_unpack(bits, section.shape)] == value).any() for value, bits in self.by_value.items()
            )
        written = np.zeros(section.shape, dtype=bool)
        for bits in self.by_value.values():
            written |= _unpack(bits, section.shape)
        section[written] = 0
        section[_unpack(self.overwritten, section.shape)] = self.previous
        return True


@dataclass
class WriteRecord:
    """What the runs of a 3D session wrote into one labels array, slice by slice."""

    array_id: int | None = None
    slices: dict[int, SliceWrite] = field(default_factory=dict)

    def merge(
        self,
        block: np.ndarray,
        axis: int,
        start: int,
        masks: Mapping[int, Mapping[int, np.ndarray]],
        values: Mapping[int, int],
        overwrite: bool,
        array_id: int,
    ) -> list[int]:
        """Write a run's masks (slice index → object id → mask) into ``block`` (the labels of
        slices ``start``… along ``axis``, changed in place), each object as its value under the
        overwrite rule, after taking back what earlier runs wrote on those slices.

        Returns the slices whose earlier result was kept because they were edited since.
        """
        if array_id != self.array_id:  # another labels array (or the layer's data was replaced)
            self.array_id, self.slices = array_id, {}
        edited = []
        for index, by_object in masks.items():
            section = SlicePlane.of(block.shape, axis, index - start).take(block)
            earlier = self.slices.pop(index, None)
            if earlier is not None and not earlier.take_back(section):
                edited.append(index)
            before = np.array(section)
            for object_id, mask in by_object.items():
                value = values[object_id]
                section[mask & writable(section, value, overwrite)] = value
            changes = SliceWrite.between(before, section)
            if changes.by_value:
                self.slices[index] = changes
        return sorted(edited)
