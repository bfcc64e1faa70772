"""3D mode: segment a volume from its middle slice and propagate (the 3D Slicer SAM 2 workflow).

Set the start and end slices (either order) on the current slicing axis; the view moves to the
middle slice. Draw a box (Shift+middle drag) per object and add it, tied to the selected class;
segment the middle slice, refine an object with more clicks or with the brush, then propagate
through the range in both directions. Once the range is set and a model is loaded, its slices are
embedded in the background (middle first), so the propagation itself mostly only tracks. Results
are written per object with its class value as one undoable step. After that, correct an object on
any slice (clicks, or napari's brush and eraser on the preview) and re-propagate from there in the
direction it lies; a re-propagated slice's earlier result for the object is replaced, the user's
own labels are kept (and those the earlier result had overwritten come back).
"""

from __future__ import annotations

from dataclasses import dataclass

import napari
import numpy as np
from magicgui.widgets import ComboBox, Container, Label, PushButton

from rwth_sam.core.coordinates import SlicePlane, range_block
from rwth_sam.core.errors import InputError, RwthSamError
from rwth_sam.core.labels.labelling import WriteRecord
from rwth_sam.core.tasks.propagation import propagate
from rwth_sam.ui.labels_io import commit_block
from rwth_sam.ui.runner import EMBED_RANGE, PREDICT, PROPAGATE, SliceProgress


@dataclass
class VolumeObject:
    """One object to propagate: its box on the middle slice and the class it belongs to."""

    object_id: int
    box: tuple[float, float, float, float]
    value: int
    name: str


class VolumePanel(Container):
    def __init__(self, owner):
        super().__init__(labels=False)
        self.owner = owner
        self.viewer: napari.viewer.Viewer = owner.viewer
        self.axis: int | None = None
        self.bounds: dict[str, int] = {}
        self.objects: list[VolumeObject] = []
        self.conditioning: dict[int, dict[int, np.ndarray]] = {}
        self.logits: dict[int, np.ndarray] = {}
        self.propagated = False
        self.flags: list[tuple[int, int, str]] = []  # (slice, object id, reason): what to look at
        # what the propagations wrote, per slice: a re-propagated slice replaces it, and leaves
        # the user's own labels alone
        self._written = WriteRecord()
        self._session = 0  # bumped when the session is reset: a run of an older one writes nothing
        self._stale_reason: str | None = None
        self._running: _Run | None = None  # the propagation in progress
        self.set_start = PushButton(text="Set start slice")
        self.set_end = PushButton(text="Set end slice")
        self.range_label = Label(value="Range: not set")
        self.add_box = PushButton(text="Add box (drawn with Shift+middle drag) for the class")
        self.objects_label = Label(value="Objects: none")
        self.object_choice = ComboBox(label="Object", choices=self._object_choices, tooltip="The object to refine or correct")
        self.segment_middle = PushButton(text="Segment middle slice")
        self.refine = PushButton(text="Refine the object with the clicks on this slice")
        self.edit = PushButton(text="Edit the object here with the brush (in the preview)")
        self.full = PushButton(text="Full segmentation (propagate both ways)")
        self.correct = PushButton(text="Use the preview as the object's mask here; re-propagate")
        self.cancel = PushButton(text="Cancel", enabled=False)
        self.flags_label = Label(value="")
        self.next_flag = PushButton(text="Go to the next slice to check", enabled=False)
        self.extend(
            [
                self.set_start, self.set_end, self.range_label, self.add_box, self.objects_label,
                Container(widgets=[self.object_choice], labels=True), self.segment_middle, self.refine, self.edit, self.full, self.correct,
                self.cancel, self.flags_label, self.next_flag,
            ]
        )  # fmt: skip
        actions = [
            (self.set_start, "Setting the start slice", lambda: self._set_bound("start")),
            (self.set_end, "Setting the end slice", lambda: self._set_bound("end")),
            (self.add_box, "Adding the box", self.add_object),
            (self.segment_middle, "Segmenting the middle slice", self.segment_middle_slice),
            (self.refine, "Refining", self.refine_object),
            (self.edit, "Editing with the brush", self.edit_with_brush),
            (self.full, "The full segmentation", lambda: self.run_propagation()),
            (self.correct, "The correction", self.correct_and_repropagate),
            (self.next_flag, "Going to the next slice to check", self.go_to_next_flag),
        ]
        for button, what, action in actions:
            button.changed.connect(owner.guard(what, action))
        self.progress = SliceProgress(self.cancel, owner.status)

    # ----------------------------------------------------------------- range
    def _current_plane(self) -> SlicePlane:
        plane = self.owner.plane_under(self.viewer.dims.point)[0]
        if plane.axis is None:
            raise InputError("3D propagation needs a volume; this image is 2D.")
        return plane

    def _set_bound(self, which: str) -> None:
        try:
            plane = self._current_plane()
        except RwthSamError as error:
            return self.owner.report_error(error)
        if self.axis != plane.axis:
            self.reset(keep_axis=False)
            self.axis = plane.axis
        self.bounds[which] = plane.index
        if len(self.bounds) == 2:
            self._go_to(self.middle)
            self.embed_range()
        self._show_state()

    @property
    def start(self) -> int:
        return min(self.bounds.values())

    @property
    def end(self) -> int:
        return max(self.bounds.values())

    @property
    def middle(self) -> int:
        return (self.start + self.end) // 2

    def _go_to(self, index: int) -> None:
        image = self.owner.image_layer
        point = np.zeros(len(self.owner.image_shape()))
        point[self.axis] = index
        world_axis = self.viewer.dims.ndim - len(point) + self.axis
        self.viewer.dims.set_point(world_axis, image.data_to_world(point)[self.axis])

    def _middle_plane(self) -> SlicePlane:
        if len(self.bounds) != 2:
            raise InputError("Set the start and the end slice first.")
        plane = self._current_plane()
        if plane.axis != self.axis or plane.index != self.middle:
            self._go_to(self.middle)
            plane = self._current_plane()
        return plane

    def _range_plane(self) -> SlicePlane:
        """The slice shown, which must be one of the range's."""
        plane = self._current_plane()
        if len(self.bounds) != 2 or plane.axis != self.axis or not self.start <= plane.index <= self.end:
            raise InputError("Go to a slice between the start and the end slice first.")
        return plane

    def embed_range(self) -> None:
        """Embed the range's slices in the background, from the middle outward, once a model is
        loaded: while the user draws boxes and refines, so that the propagation then only tracks.

        It yields to any other work (clicks, scrolling, the propagation itself) and resumes after
        it; it stops when the cache's budget is full of slices nearer the middle.
        """
        owner = self.owner
        if owner.workspace.loaded is None or len(self.bounds) != 2:
            return
        try:
            request = owner.model_request()
        except RwthSamError:
            return
        runner, axis, start, end = owner.runner, self.axis, self.start, self.end

        def job():
            segmenter = owner.segmenter_for(request)
            plane = segmenter.plane(axis, (start + end) // 2)
            segmenter.prefetch(plane, end - start, should_stop=lambda: runner.has_waiting, within=(start, end))
            return runner.has_waiting

        def resume(interrupted: bool) -> None:
            if interrupted and len(self.bounds) == 2 and (self.axis, self.start, self.end) == (axis, start, end):
                self.embed_range()

        runner.submit(EMBED_RANGE, job, resume, "Embedding the range ahead")

    # ----------------------------------------------------------------- objects
    def _object_choices(self, _widget=None) -> list[tuple[str, int]]:
        return [(f"{obj.object_id} {obj.name}", obj.object_id) for obj in self.objects]

    def _selected_object(self) -> VolumeObject:
        chosen = self.object_choice.value
        for obj in self.objects:
            if obj.object_id == chosen:
                return obj
        raise InputError("Add a box for at least one object first.")

    def add_object(self) -> None:
        owner = self.owner
        try:
            plane = self._middle_plane()
            box = owner.prompts.box
            if box is None or owner.prompts.plane != plane:
                raise InputError("Draw a box on the middle slice first (Shift+middle drag).")
            labels = owner.target_labels()
            value = owner.submit_value(labels, taken=[obj.value for obj in self.objects])
        except RwthSamError as error:
            return owner.report_error(error)
        segment_class = owner.classes.value
        name = segment_class.name if segment_class is not None else f"label {value}"
        self.objects.append(VolumeObject(len(self.objects) + 1, box, value, name))
        self.object_choice.reset_choices()
        self.object_choice.value = self.objects[-1].object_id
        owner.clear_prompts()
        self._show_state()

    def segment_middle_slice(self) -> None:
        """The image predictor on the middle slice, one box per object."""
        owner = self.owner
        try:
            plane = self._middle_plane()
            if not self.objects:
                raise InputError("Add a box for at least one object first.")
            request = owner.model_request()
        except RwthSamError as error:
            return owner.report_error(error)
        objects = list(self.objects)

        def job():
            segmenter = owner.segmenter_for(request)
            return plane, {obj.object_id: segmenter.predict(plane, box=obj.box) for obj in objects}

        owner.status.value = "Segmenting the middle slice…"
        owner.runner.submit(PREDICT, job, self._on_middle, "Segmenting the middle slice")

    def _on_middle(self, result) -> None:
        plane, predictions = result
        self.conditioning = {plane.index: {oid: p.mask for oid, p in predictions.items()}}
        self.logits = {oid: p.best_logits for oid, p in predictions.items()}
        self._show_slice_preview(plane)
        self.owner.status.value = f"Middle slice: {len(predictions)} objects. Refine, then run the full segmentation."
        self.embed_range()  # the model is loaded now

    def refine_object(self) -> None:
        """More clicks on the middle slice (with the object's box and last logits) refine its mask."""
        owner = self.owner
        state = owner.prompts
        try:
            plane = self._middle_plane()
            if not self.objects or plane.index not in self.conditioning:
                raise InputError("Segment the middle slice first.")
            if not state.points or state.plane != plane:
                raise InputError("Click on the middle slice to refine (middle click: add, Ctrl+middle: remove).")
            obj = self._selected_object()
            request = owner.model_request()
        except RwthSamError as error:
            return owner.report_error(error)
        points, labels, logits = list(state.points), list(state.labels), self.logits.get(obj.object_id)

        def job():
            segmenter = owner.segmenter_for(request)
            return obj.object_id, segmenter.predict(plane, points, labels, box=obj.box, mask_logits=logits)

        def apply(result):
            object_id, prediction = result
            self.conditioning[plane.index][object_id] = prediction.mask
            self.logits[object_id] = prediction.best_logits
            owner.clear_prompts()
            self._show_slice_preview(plane)

        owner.runner.submit(PREDICT, job, apply, "Refining")

    def edit_with_brush(self) -> None:
        """Show the object's mask on this slice in the preview and pick napari's brush there: paint
        and erase (the eraser too), then use the preview as the object's mask."""
        owner = self.owner
        try:
            plane = self._range_plane()
            obj = self._selected_object()
            labels = owner.target_labels()
        except RwthSamError as error:
            return owner.report_error(error)
        mask = self.conditioning.get(plane.index, {}).get(obj.object_id)
        if mask is None:  # a propagated slice: the object's label there, as it is now
            mask = np.asarray(plane.take(labels.data)) == obj.value
        owner.clear_prompts()
        preview = owner.show_preview(plane, mask)
        self.viewer.layers.selection.active = preview
        preview.selected_label = 1
        preview.mode = "paint"
        owner.status.value = f"Paint or erase object {obj.object_id} ({obj.name}) in the preview, then use the preview."

    def _show_slice_preview(self, plane: SlicePlane) -> None:
        masks = self.conditioning.get(plane.index, {})
        union = np.zeros(plane.size, dtype=bool)
        for mask in masks.values():
            union |= mask
        self.owner.show_preview(plane, union)

    # ----------------------------------------------------------------- propagation
    def run_propagation(self, direction: str = "both", from_index: int | None = None) -> None:
        owner = self.owner
        try:
            if not self.conditioning:
                raise InputError("Segment the middle slice first.")
            request = owner.model_request()
            labels = owner.target_labels()
        except RwthSamError as error:
            return owner.report_error(error)
        if self.progress.running:
            return owner.report_error(InputError("A propagation is running: wait for it, or cancel it first."))
        axis, start, end = self.axis, self.start, self.end
        conditioning = {index: dict(masks) for index, masks in self.conditioning.items()}
        run = _Run(self._session, labels, axis, start, end)
        self._running = run
        self.progress.start(end - start + 1, "Propagating")

        def job():
            segmenter = owner.segmenter_for(request)
            return run, propagate(
                segmenter, axis, start, end, conditioning, direction=direction, from_index=from_index,
                on_slice=self.progress.advanced.emit, should_stop=self.progress.cancel_requested.is_set,
            )  # fmt: skip

        owner.status.value = "Propagating…"
        owner.runner.submit(PROPAGATE, job, self._on_propagated, "Propagating", on_finished=self._on_run_finished)

    def _on_run_finished(self) -> None:
        self._running = None
        self.progress.finish()

    def layer_removed(self) -> None:
        """The running propagation's labels layer removed: stop it now (it will write nothing)."""
        if self._running is not None and self._running.labels not in self.viewer.layers:
            self.progress.request_cancel(quietly=True)

    def _on_propagated(self, run_and_result) -> None:
        """Write every finished slice's objects into the run's labels layer as one undoable step."""
        run, result = run_and_result
        owner = self.owner
        if run.session != self._session:
            return owner.report_error(InputError(self._stale_reason or "The 3D session changed: nothing was written."))
        labels = run.labels
        if labels not in self.viewer.layers:
            return owner.report_error(
                InputError(f"The labels layer '{labels.name}' was removed during the propagation: nothing was written.")
            )
        shape = owner.image_shape()
        if tuple(labels.data.shape) != shape:
            return owner.report_error(
                InputError(f"The labels layer '{labels.name}' changed shape during the propagation: nothing was written.")
            )
        values = {obj.object_id: obj.value for obj in self.objects}
        block = range_block(labels.data.ndim, run.axis, run.start, run.end)  # the range only, not the volume
        new = np.array(labels.data[block], copy=True)
        masks = {index: result.masks.get(index, {}) for index in result.finished}
        edited = self._written.merge(new, run.axis, run.start, masks, values, owner.overwrite.value, id(labels.data))
        written = commit_block(labels, block, new)
        self.propagated = True
        owner.show_preview(None, None)  # the result is in the labels layer now
        for obj in self.objects:
            owner.record_class(labels, obj.value, owner.profile_class(obj.name))
        self.flags = sorted([f for f in self.flags if f[0] not in result.finished] + result.flags)
        self.flags_label.value = _describe_flags(self.flags)
        self.next_flag.enabled = bool(self.flags)
        state = "cancelled, kept" if result.cancelled else "done:"
        kept = f" Slices edited since the last run keep their labels: {_listed(edited)}." if edited else ""
        owner.status.value = f"Propagation {state} {len(result.finished)} slices ({written} voxels).{kept}"

    def go_to_next_flag(self) -> None:
        """Show the next flagged slice after the current one (wrapping around), with its reasons."""
        if not self.flags:
            return
        try:
            current = self._current_plane().index
        except RwthSamError as error:
            return self.owner.report_error(error)
        later = [f for f in self.flags if f[0] > current]
        index = (later or self.flags)[0][0]
        self._go_to(index)
        reasons = "; ".join(f"object {obj}: {reason}" for i, obj, reason in self.flags if i == index)
        self.owner.status.value = f"Slice {index}: {reasons}"

    def correct_and_repropagate(self) -> None:
        """The preview on this slice (a click's mask, brush edits, or both) becomes the object's mask
        there, kept as a conditioning slice; after a propagation, propagate on from this slice in
        the direction it lies (both ways from the middle slice)."""
        owner = self.owner
        try:
            plane = self._range_plane()
            obj = self._selected_object()
        except RwthSamError as error:
            return owner.report_error(error)
        mask = owner.preview_mask(plane)
        if not mask.any():
            return owner.report_error(InputError("The preview is empty on this slice: click the object or paint it first."))
        self.conditioning.setdefault(plane.index, {})[obj.object_id] = mask
        if plane.index == self.middle:
            self.logits.pop(obj.object_id, None)  # refining with clicks starts from this mask's box again
        owner.clear_prompts()
        if not self.propagated:
            self._show_slice_preview(plane)
            owner.status.value = f"Object {obj.object_id}'s mask on slice {plane.index} set. Run the full segmentation."
            return
        direction = "both" if plane.index == self.middle else "forward" if plane.index > self.middle else "backward"
        self.run_propagation(direction=direction, from_index=plane.index)

    # ----------------------------------------------------------------- state
    def reset(self, keep_axis: bool = True, reason: str | None = None) -> None:
        """Start a new 3D session; a run of the old one still going is cancelled and writes nothing
        (``reason`` says why, when it ends)."""
        if not keep_axis:
            self.axis = None
        self.progress.request_cancel(quietly=True)
        self._session += 1
        self._stale_reason = reason
        self.bounds, self.objects, self.conditioning, self.logits = {}, [], {}, {}
        self.propagated, self._written, self.flags = False, WriteRecord(), []
        self.flags_label.value, self.next_flag.enabled = "", False
        self.object_choice.reset_choices()
        self._show_state()

    def _show_state(self) -> None:
        if len(self.bounds) == 2:
            self.range_label.value = f"Slices {self.start}–{self.end} (axis {self.axis}), middle {self.middle}"
        elif self.bounds:
            self.range_label.value = f"Range: {next(iter(self.bounds.items()))[0]} = {next(iter(self.bounds.values()))}"
        else:
            self.range_label.value = "Range: not set"
        names = ", ".join(f"{obj.object_id} {obj.name}" for obj in self.objects)
        self.objects_label.value = f"Objects: {names or 'none'}"


@dataclass(frozen=True)
class _Run:
    """What a propagation was started on: its session, target layer and range."""

    session: int
    labels: napari.layers.Labels
    axis: int
    start: int
    end: int


def _listed(indices, shown: int = 6) -> str:
    more = f" and {len(indices) - shown} more" if len(indices) > shown else ""
    return ", ".join(str(index) for index in indices[:shown]) + more


def _describe_flags(flags, shown: int = 6) -> str:
    """The flagged slices in a line or two; *Go to the next slice to check* tells each one's reasons
    (listing them all here made the label too long for the dock: it widened and was cut off)."""
    slices = sorted({index for index, _, _ in flags})
    if not slices:
        return ""
    return f"To check: slice{'s' * (len(slices) > 1)} {_listed(slices, shown)}"
