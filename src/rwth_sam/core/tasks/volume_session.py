"""The 3D session, without Qt: what a volume's propagation starts from and what its runs wrote.

A session holds the range (start and end slice on one axis, either order), the objects (a box on
the middle slice and a class each), the conditioning masks per slice and object, each object's last
logits (for *Refine*), the slices flagged to check, and a ``WriteRecord`` of what its runs wrote, so
that a re-propagated slice replaces the run's own earlier result and leaves the user's labels alone.

It belongs to one ``SessionIdentity`` (image, model, intensity window), which the GUI binds it to:
another image, data or model starts a new session (a run of the old one still going writes nothing,
and says why); another window only drops the logits, which came from the old window's embedding
(*Refine* then starts again from the object's box). Results of jobs started under another identity
are dropped.

The napari panel (``ui/volume_panel.py``) is a view of it: it forwards the user's buttons here and
renders the events (``changed``, ``flags_changed``, ``restarted``, and the objects' evented list).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from psygnal import Signal
from psygnal.containers import EventedList

from rwth_sam.core.coordinates import range_block
from rwth_sam.core.embeddings.identity import DATA, IMAGE, MODEL, WINDOW, SessionIdentity
from rwth_sam.core.errors import InputError
from rwth_sam.core.labels.block_writes import BlockChange, slice_pieces, write_blocks
from rwth_sam.core.labels.labelling import WriteRecord

if TYPE_CHECKING:
    from rwth_sam.core.tasks.propagation import PropagationResult

IMAGE_CHANGED = "The image changed during the propagation: it was stopped and nothing was written."
DATA_CHANGED = "The image's data changed during the propagation: it was stopped and nothing was written."
MODEL_CHANGED = "The model changed during the propagation: it was stopped and nothing was written."
SESSION_CHANGED = "The 3D session changed: nothing was written."
_RESTART_REASONS = {IMAGE: IMAGE_CHANGED, DATA: DATA_CHANGED, MODEL: MODEL_CHANGED}


@dataclass(frozen=True)
class VolumeObject:
    """One object to propagate: its box on the middle slice and the class it belongs to."""

    object_id: int
    box: tuple[float, float, float, float]
    value: int
    name: str


@dataclass(frozen=True)
class Refinement:
    """What a *Refine* job needs, taken on the GUI thread: the object and its last logits (from the
    session's identity: another window drops them), with the session and identity they belong to."""

    generation: int
    identity: SessionIdentity | None
    index: int  # the middle slice
    object: VolumeObject
    logits: np.ndarray | None


@dataclass(frozen=True)
class Run:
    """What a propagation was started on: its session, target labels (the view's layer), range and
    conditioning masks (a copy: corrections made meanwhile belong to the next run)."""

    generation: int
    labels: object
    axis: int
    start: int
    end: int
    conditioning: dict[int, dict[int, np.ndarray]]
    region: tuple[int, int, int, int] | None = None  # the rectangle of every slice it segments


@dataclass(frozen=True)
class Applied:
    """What writing a run's result changed (for undo), and the slices kept as they were because the
    user edited them since the last run."""

    changes: list[BlockChange]
    edited: list[int]


class VolumeSession:
    changed = Signal()  # the range, the objects or the masks
    flags_changed = Signal()
    restarted = Signal(object)  # a new session began (the reason a run of the old one is stale, or None)

    def __init__(self):
        self.axis: int | None = None
        self.bounds: dict[str, int] = {}  # "start" / "end" -> slice index, either order
        self.region: tuple[int, int, int, int] | None = None  # every slice's rectangle the model sees, if not whole
        self.objects: EventedList[VolumeObject] = EventedList()
        self.conditioning: dict[int, dict[int, np.ndarray]] = {}  # slice -> object id -> (H, W) mask
        self.logits: dict[int, np.ndarray] = {}  # object id -> its last low-resolution logits
        self.propagated = False
        self.flags: list[tuple[int, int, str]] = []  # (slice, object id, reason): what to look at
        self.written = WriteRecord()
        self.generation = 0  # bumped by reset: a run of an older session writes nothing
        self.identity: SessionIdentity | None = None
        self.running: Run | None = None  # the propagation in progress
        self._stale_reason: str | None = None

    # ----------------------------------------------------------------- identity
    def bind(self, identity: SessionIdentity) -> None:
        """Tie the session to ``identity``: another image, data or model starts a new session (a run
        of the old one writes nothing, saying which changed); another window drops the logits only."""
        change, self.identity = identity.change_from(self.identity), identity
        if change in _RESTART_REASONS:
            self.reset(_RESTART_REASONS[change])
        elif change == WINDOW:
            self.logits.clear()

    def _current(self, generation: int, identity: SessionIdentity | None) -> bool:
        """Whether a job started under ``generation`` and ``identity`` still belongs to this session."""
        return generation == self.generation and identity == self.identity

    def reset(self, reason: str | None = None) -> None:
        """Start a new session on the same axis and identity; a run of the old one writes nothing
        (``reason`` says why, when it ends)."""
        self.generation += 1
        self._stale_reason = reason
        self.bounds, self.conditioning, self.logits, self.flags = {}, {}, {}, []
        self.region = None
        self.objects.clear()
        self.propagated, self.written = False, WriteRecord()
        self.restarted.emit(reason)
        self.flags_changed.emit()
        self.changed.emit()

    # ----------------------------------------------------------------- range
    def set_bound(self, which: str, axis: int, index: int) -> bool:
        """Set the start or end slice; another axis starts a new session. True once both are set."""
        if axis != self.axis:
            self.reset()
            self.axis = axis
        self.bounds[which] = index
        self.changed.emit()
        return self.has_range

    @property
    def has_range(self) -> bool:
        return len(self.bounds) == 2

    @property
    def start(self) -> int:
        return min(self.bounds.values())

    @property
    def end(self) -> int:
        return max(self.bounds.values())

    @property
    def middle(self) -> int:
        return (self.start + self.end) // 2

    def require_range(self) -> None:
        if not self.has_range:
            raise InputError("Set the start and the end slice first.")

    def require_in_range(self, axis: int | None, index: int | None) -> None:
        if not self.has_range or axis != self.axis or not self.start <= index <= self.end:
            raise InputError("Go to a slice between the start and the end slice first.")

    def describe_range(self) -> str:
        if self.has_range:
            return f"Slices {self.start}–{self.end} (axis {self.axis}), middle {self.middle}"
        if self.bounds:
            which, index = next(iter(self.bounds.items()))
            return f"Range: {which} = {index}"
        return "Range: not set"

    # ----------------------------------------------------------------- objects
    def add_object(
        self, box: tuple[float, float, float, float], value: int, name: str, region: tuple | None = None
    ) -> VolumeObject:
        """An object boxed on the middle slice; the first one's ``region`` (its box lies in that rectangle
        of the slice, at native resolution) becomes the session's: every slice is segmented in it."""
        if not self.objects:
            self.region = region
        elif region != self.region:
            raise InputError("Draw this box in the region of the first object (or start the objects afresh).")
        obj = VolumeObject(len(self.objects) + 1, tuple(box), value, name)
        self.objects.append(obj)
        self.changed.emit()
        return obj

    def object(self, object_id) -> VolumeObject:
        for obj in self.objects:
            if obj.object_id == object_id:
                return obj
        raise InputError("Add a box for at least one object first.")

    def taken_values(self) -> list[int]:
        return [obj.value for obj in self.objects]

    def describe_objects(self) -> str:
        names = ", ".join(f"{obj.object_id} {obj.name}" for obj in self.objects)
        return f"Objects: {names or 'none'}"

    # ----------------------------------------------------------------- masks
    def set_middle(
        self,
        generation: int,
        identity: SessionIdentity,
        index: int,
        masks: Mapping[int, np.ndarray],
        logits: Mapping[int, np.ndarray],
    ) -> bool:
        """The middle slice ``index`` segmented (a mask per object): it becomes the only conditioning
        slice. False when the session or its identity changed since (nothing is kept)."""
        if not self._current(generation, identity):
            return False
        self.conditioning = {index: dict(masks)}
        self.logits = dict(logits)
        self.changed.emit()
        return True

    def require_middle_segmented(self) -> None:
        if not self.objects or not self.has_range or self.middle not in self.conditioning:
            raise InputError("Segment the middle slice first.")

    def refinement(self, object_id) -> Refinement:
        self.require_middle_segmented()
        obj = self.object(object_id)
        return Refinement(self.generation, self.identity, self.middle, obj, self.logits.get(obj.object_id))

    def refined(self, refinement: Refinement, mask: np.ndarray, logits: np.ndarray) -> bool:
        """A refinement's result: the object's new mask on the middle slice and its logits. False
        when the session or its identity changed since (nothing is kept)."""
        if not self._current(refinement.generation, refinement.identity):
            return False
        object_id = refinement.object.object_id
        self.conditioning.setdefault(refinement.index, {})[object_id] = mask
        self.logits[object_id] = logits
        self.changed.emit()
        return True

    def correct(self, index: int, object_id, mask: np.ndarray) -> str | None:
        """``mask`` becomes the object's mask on slice ``index``, kept as a conditioning slice.

        Returns the direction to propagate in from there: both ways from the middle slice, forward
        above it, backward below it; None before the first propagation (the mask is only set).
        """
        obj = self.object(object_id)
        if not mask.any():
            raise InputError("The preview is empty on this slice: click the object or paint it first.")
        self.conditioning.setdefault(index, {})[obj.object_id] = mask
        if index == self.middle:
            self.logits.pop(obj.object_id, None)  # refining with clicks starts from this mask's box again
        self.changed.emit()
        if not self.propagated:
            return None
        return "both" if index == self.middle else "forward" if index > self.middle else "backward"

    def mask_on(self, index: int, object_id) -> np.ndarray | None:
        """The object's conditioning mask on slice ``index``, if it has one."""
        return self.conditioning.get(index, {}).get(object_id)

    def union_on(self, index: int, size: tuple[int, int]) -> np.ndarray:
        """All objects' conditioning masks on slice ``index`` together (the preview shows them)."""
        union = np.zeros(size, dtype=bool)
        for mask in self.conditioning.get(index, {}).values():
            union |= mask
        return union

    # ----------------------------------------------------------------- propagation
    def require_conditioning(self) -> None:
        if not self.conditioning:
            raise InputError("Segment the middle slice first.")

    def start_run(self, labels: object) -> Run:
        self.require_conditioning()
        conditioning = {index: dict(masks) for index, masks in self.conditioning.items()}
        self.running = Run(self.generation, labels, self.axis, self.start, self.end, conditioning, self.region)
        return self.running

    def run_finished(self, run: Run) -> None:
        if self.running is run:
            self.running = None

    def check_current(self, run: Run) -> None:
        """Refuse the result of a run of an older session, saying why it is stale."""
        if run.generation != self.generation:
            raise InputError(self._stale_reason or SESSION_CHANGED)

    def apply(
        self,
        run: Run,
        result: PropagationResult,
        labels,
        overwrite: bool,
        step: Callable[[int, int], None] | None = None,
    ) -> Applied:
        """Write a run's finished slices into ``labels`` (a numpy or zarr array), a few whole slices at
        a time (``write_blocks``: memory of those slices, not of the range): each object as its class
        value under the overwrite rule, after taking back what earlier runs wrote there, except on
        slices the user edited since. ``step(done, total)`` follows the slices.

        This runs in a worker, with the labels locked; ``applied`` then takes the run's flags, on the
        GUI thread. If a write fails, the labels and the record of earlier runs are as they were."""
        self.check_current(run)
        record = self.written  # a reset meanwhile gives the session a new record: this run's is this one
        kept = record.array_id, dict(record.slices)
        objects = {obj.object_id: obj.value for obj in self.objects}
        edited: list[int] = []

        def change(after: np.ndarray, first: int, last: int) -> None:
            masks = {index: result.masks.get(index, {}) for index in range(first, last + 1)}
            edited.extend(record.merge(after, run.axis, first, masks, objects, overwrite, id(labels)))

        block_of = functools.partial(self._block, run, labels.ndim)
        pieces = slice_pieces(labels, sorted(result.finished), block_of, change, step)
        try:
            changes = write_blocks(labels, pieces)
        except BaseException:
            record.array_id, record.slices = kept
            raise
        return Applied(changes, sorted(edited))

    def applied(self, run: Run, result: PropagationResult) -> None:
        """On the GUI thread, after ``apply``: the run's flags replace those of its slices. Raises when
        the session changed during the write (the caller then takes the write back)."""
        self.check_current(run)
        self.propagated = True
        self.flags = sorted([flag for flag in self.flags if flag[0] not in result.finished] + result.flags)
        self.flags_changed.emit()

    @staticmethod
    def _block(run: Run, ndim: int, first: int, last: int) -> tuple[slice, ...]:
        """Slices ``first`` to ``last`` of the run, only the region of each if it has one."""
        block = list(range_block(ndim, run.axis, first, last))
        if run.region is not None:
            row_axis, col_axis = (a for a in range(ndim) if a != run.axis)
            row0, row1, col0, col1 = run.region
            block[row_axis], block[col_axis] = slice(row0, row1), slice(col0, col1)
        return tuple(block)

    # ----------------------------------------------------------------- flags
    def next_flag(self, current: int) -> tuple[int, str] | None:
        """The next flagged slice after ``current`` (wrapping around) and its reasons."""
        if not self.flags:
            return None
        later = [flag for flag in self.flags if flag[0] > current]
        index = (later or self.flags)[0][0]
        reasons = "; ".join(f"object {obj}: {reason}" for i, obj, reason in self.flags if i == index)
        return index, reasons


def run_summary(result: PropagationResult, written: int, edited: Sequence[int]) -> str:
    state = "cancelled, kept" if result.cancelled else "done:"
    kept = f" Slices edited since the last run keep their labels: {listed(edited)}." if edited else ""
    return f"Propagation {state} {len(result.finished)} slices ({written} voxels).{kept}"


def listed(indices: Sequence[int], shown: int = 6) -> str:
    more = f" and {len(indices) - shown} more" if len(indices) > shown else ""
    return ", ".join(str(index) for index in indices[:shown]) + more


def describe_flags(flags, shown: int = 6) -> str:
    """The flagged slices in a line or two; *Go to the next slice to check* tells each one's reasons
    (listing them all here made the label too long for the dock: it widened and was cut off)."""
    slices = sorted({index for index, _, _ in flags})
    if not slices:
        return ""
    return f"To check: slice{'s' * (len(slices) > 1)} {listed(slices, shown)}"
