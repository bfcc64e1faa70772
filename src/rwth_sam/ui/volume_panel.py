"""3D mode: segment a volume from its middle slice and propagate (the 3D Slicer SAM 2 workflow).

Set the start and end slices (either order) on the current slicing axis; the view moves to the
middle slice. Draw a box (Shift+middle drag) per object and add it, tied to the selected class;
segment the middle slice, refine an object with more clicks or with the brush, then propagate
through the range in both directions. Once the range is set and a model is loaded, its slices are
embedded in the background (middle first), so the propagation itself mostly only tracks. Results
are written per object with its class value as one undoable step. After that, correct an object on
any slice (clicks, or napari's brush and eraser on the preview) and re-propagate from there in the
direction it lies; a re-propagated slice's earlier result for the object is replaced, the user's
own labels are kept (and those the earlier result had overwritten come back). A propagation is a
napari run with its own progress bar; *Cancel* stops it at its next slice, keeping those finished,
and the buttons that would change the session under it wait for its end.

The panel is a view of a ``VolumeSession`` (the range, objects, masks, runs and their rules, in the
core): its buttons forward to the session, its labels render the session's events, and it does
only the napari work (moving the view, the preview, running jobs, writing the labels layer).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from magicgui.widgets import ComboBox, Container, Label, PushButton

from rwth_sam.core.coordinates import SlicePlane
from rwth_sam.core.errors import InputError, RwthSamError
from rwth_sam.core.tasks.propagation import propagate, range_plane
from rwth_sam.core.tasks.volume_session import (
    VolumeObject,
    VolumeSession,
    describe_flags,
    run_summary,
)
from rwth_sam.ui.context import PanelContext
from rwth_sam.ui.labels_io import write_in_worker
from rwth_sam.ui.layout import side_by_side
from rwth_sam.ui.runner import EMBED_RANGE, PREDICT, PROPAGATE, PanelRun
from rwth_sam.ui.runner import Run as RunHandle


class VolumePanel(Container):
    def __init__(self, context: PanelContext):
        super().__init__(labels=False)
        self.context = context
        self.viewer = context.viewer
        self.session = VolumeSession()
        self.writing = None  # the run whose result is being written
        self.set_start = PushButton(text="Set start slice")
        self.set_end = PushButton(text="Set end slice")
        self.range_label = Label(value="Range: not set")
        self.add_box = PushButton(
            text="Add box", tooltip="The box drawn with Shift+middle drag, as an object of the class"
        )
        self.objects_label = Label(value="Objects: none")
        self.object_choice = ComboBox(
            label="Object", choices=self._object_choices, tooltip="The object to refine or correct"
        )
        self.segment_middle = PushButton(text="Segment middle slice")
        self.refine = PushButton(text="Refine", tooltip="Refine the object with the clicks on this slice")
        self.edit = PushButton(
            text="Edit with the brush",
            tooltip="Put the object's mask on this slice into the preview, the brush selected",
        )
        self.full = PushButton(text="Full segmentation", tooltip="Propagate every object both ways through the range")
        self.correct = PushButton(
            text="Use the preview here; re-propagate", tooltip="The preview becomes the object's mask on this slice"
        )
        # the propagation going on; what would change the session under it waits
        self.run = PanelRun(
            context.runner, PROPAGATE,
            (self.set_start, self.set_end, self.add_box, self.segment_middle, self.full, self.correct),
            context.say, context.reveal,
        )  # fmt: skip
        self.cancel = self.run.cancel_button
        self.flags_label = Label(value="")
        self.next_flag = PushButton(text="Go to the next slice to check", enabled=False)
        self.extend(
            [
                side_by_side(self.set_start, self.set_end), self.range_label, self.add_box, self.objects_label,
                Container(widgets=[self.object_choice], labels=True), self.segment_middle,
                side_by_side(self.refine, self.edit), self.full, self.correct, self.flags_label, self.next_flag,
                self.run.row,
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
            button.changed.connect(context.guard(what, action))
        session = self.session
        session.changed.connect(self._show_state)
        session.flags_changed.connect(self._show_flags)
        session.restarted.connect(self.cancel_runs)  # the run would write nothing: stop it now
        session.objects.events.removed.connect(lambda *_: self.object_choice.reset_choices())
        session.objects.events.inserted.connect(self._on_object_added)

    # ----------------------------------------------------------------- view
    def _show_state(self) -> None:
        self.range_label.value = self.session.describe_range()
        self.objects_label.value = self.session.describe_objects()

    def _show_flags(self) -> None:
        self.flags_label.value = describe_flags(self.session.flags)
        self.next_flag.enabled = bool(self.session.flags)

    def _object_choices(self, _widget=None) -> list[tuple[str, int]]:
        return [(f"{obj.object_id} {obj.name}", obj.object_id) for obj in self.session.objects]

    def _on_object_added(self, _index: int, obj: VolumeObject) -> None:
        self.object_choice.reset_choices()
        self.object_choice.value = obj.object_id

    def _current_plane(self) -> SlicePlane:
        """The slice shown, upright (as the session holds every slice), or its region the session segments
        at native resolution."""
        plane = self.context.plane_under(self.viewer.dims.point)[0].upright
        if plane.axis is None:
            raise InputError("3D propagation needs a volume; this image is 2D.")
        if self.session.region is not None and plane.axis == self.session.axis:
            return replace(plane, region=self.session.region)
        return plane

    def _go_to(self, index: int) -> None:
        image = self.context.image_layer
        point = np.zeros(len(self.context.image_shape()))
        point[self.session.axis] = index
        world_axis = self.viewer.dims.ndim - len(point) + self.session.axis
        self.viewer.dims.set_point(world_axis, image.data_to_world(point)[self.session.axis])

    def _middle_plane(self) -> SlicePlane:
        self.session.require_range()
        plane = self._current_plane()
        if plane.axis != self.session.axis or plane.index != self.session.middle:
            self._go_to(self.session.middle)
            plane = self._current_plane()
        return plane

    def _range_plane(self) -> SlicePlane:
        """The slice shown, which must be one of the range's."""
        plane = self._current_plane()
        self.session.require_in_range(plane.axis, plane.index)
        return plane

    def _show_slice_preview(self, plane: SlicePlane) -> None:
        self.context.show_preview(plane, self.session.union_on(plane.index, plane.size))

    # ----------------------------------------------------------------- range
    def _set_bound(self, which: str) -> None:
        try:
            plane = self._current_plane()
        except RwthSamError as error:
            return self.context.report_error(error)
        if self.session.set_bound(which, plane.axis, plane.index):
            self._go_to(self.session.middle)
            self.embed_range()

    def embed_range(self) -> None:
        """Embed the range's slices in the background, from the middle outward, once a model is
        loaded: while the user draws boxes and refines, so that the propagation then only tracks.

        It yields to any other work (clicks, scrolling, the propagation itself) and resumes after
        it; it stops when the cache's budget is full of slices nearer the middle.
        """
        context, session = self.context, self.session
        if not context.model_loaded or not session.has_range:
            return
        try:
            request = context.model_request()
        except RwthSamError:
            return
        runner, axis, start, end, region = context.runner, session.axis, session.start, session.end, session.region

        def job():
            segmenter = context.segmenter_for(request)
            plane = range_plane(segmenter, axis, (start + end) // 2, region)
            segmenter.prefetch(plane, end - start, should_stop=lambda: runner.has_waiting, within=(start, end))
            return runner.has_waiting

        def resume(interrupted: bool) -> None:
            if interrupted and session.has_range and (session.axis, session.start, session.end) == (axis, start, end):
                self.embed_range()

        runner.submit(EMBED_RANGE, job, resume, "Embedding the range ahead", bar=request.download)

    # ----------------------------------------------------------------- objects
    def add_object(self) -> None:
        context = self.context
        try:
            plane = self._middle_plane()
            box, boxed = context.prompts.box, context.prompts.plane
            if box is None or boxed is None or boxed.upright.whole != plane.whole:
                raise InputError("Draw a box on the middle slice first (Shift+middle drag).")
            box, boxed = boxed.xy_in(boxed.upright, box), boxed.upright
            labels = context.target_labels()
            value = context.submit_value(labels, taken=self.session.taken_values())
            segment_class = context.selected_class
            name = segment_class.name if segment_class is not None else f"label {value}"
            self.session.add_object(box, value, name, region=boxed.region)
        except RwthSamError as error:
            return context.report_error(error)
        context.clear_prompts()

    def segment_middle_slice(self) -> None:
        """The image predictor on the middle slice, one box per object."""
        context, session = self.context, self.session
        try:
            plane = self._middle_plane()
            if not session.objects:
                raise InputError("Add a box for at least one object first.")
            request = context.model_request()
        except RwthSamError as error:
            return context.report_error(error)
        objects, generation, identity = list(session.objects), session.generation, session.identity

        def job():
            segmenter = context.segmenter_for(request)
            return {obj.object_id: segmenter.predict(plane, box=obj.box) for obj in objects}

        def apply(predictions) -> None:
            masks = {object_id: p.mask for object_id, p in predictions.items()}
            logits = {object_id: p.best_logits for object_id, p in predictions.items()}
            if not session.set_middle(generation, identity, plane.index, masks, logits):
                return
            self._show_slice_preview(plane)
            context.say(f"Middle slice: {len(predictions)} objects. Refine, then run the full segmentation.")
            self.embed_range()  # the model is loaded now

        context.say("Segmenting the middle slice…")
        context.runner.submit(PREDICT, job, apply, "Segmenting the middle slice", bar=request.download)

    def refine_object(self) -> None:
        """More clicks on the middle slice (with the object's box and last logits) refine its mask."""
        context, session = self.context, self.session
        prompts = context.prompts
        try:
            plane = self._middle_plane()
            refinement = session.refinement(self.object_choice.value)
            if not prompts.points or prompts.plane.upright != plane:
                raise InputError("Click on the middle slice to refine (middle click: add, Ctrl+middle: remove).")
            request = context.model_request()
        except RwthSamError as error:
            return context.report_error(error)
        points = [tuple(point) for point in prompts.plane.xy_in(plane, list(prompts.points))]
        labels, box = list(prompts.labels), refinement.object.box

        def job():
            segmenter = context.segmenter_for(request)
            return segmenter.predict(plane, points, labels, box=box, mask_logits=refinement.logits)

        def apply(prediction) -> None:
            if session.refined(refinement, prediction.mask, prediction.best_logits):
                context.clear_prompts()
                self._show_slice_preview(plane)

        context.runner.submit(PREDICT, job, apply, "Refining", bar=request.download)

    def edit_with_brush(self) -> None:
        """Show the object's mask on this slice in the preview and pick napari's brush there: paint
        and erase (the eraser too), then use the preview as the object's mask."""
        context = self.context
        try:
            plane = self._range_plane()
            obj = self.session.object(self.object_choice.value)
            labels = context.target_labels()
        except RwthSamError as error:
            return context.report_error(error)
        mask = self.session.mask_on(plane.index, obj.object_id)
        if mask is None:  # a propagated slice: the object's label there, as it is now
            mask = np.asarray(plane.take(labels.data)) == obj.value
        context.clear_prompts()
        preview = context.show_preview(plane, mask)
        self.viewer.layers.selection.active = preview
        preview.selected_label = 1
        preview.mode = "paint"
        context.say(f"Paint or erase object {obj.object_id} ({obj.name}) in the preview, then use the preview.")

    def correct_and_repropagate(self) -> None:
        """The preview on this slice (a click's mask, brush edits, or both) becomes the object's mask
        there, kept as a conditioning slice; after a propagation, propagate on from this slice in
        the direction it lies (both ways from the middle slice)."""
        context = self.context
        try:
            plane = self._range_plane()
            obj = self.session.object(self.object_choice.value)
            direction = self.session.correct(plane.index, obj.object_id, context.preview_mask(plane))
        except RwthSamError as error:
            return context.report_error(error)
        context.clear_prompts()
        if direction is None:
            self._show_slice_preview(plane)
            context.say(f"Object {obj.object_id}'s mask on slice {plane.index} set. Run the full segmentation.")
            return
        self.run_propagation(direction=direction, from_index=plane.index)

    # ----------------------------------------------------------------- propagation
    def run_propagation(self, direction: str = "both", from_index: int | None = None) -> None:
        context = self.context
        try:
            self.session.require_conditioning()
            request = context.model_request()
            labels = context.target_labels()
        except RwthSamError as error:
            return context.report_error(error)
        if self.current_run is not None:
            return context.report_error(InputError("A propagation is running: wait for it, or cancel it first."))
        run = self.session.start_run(labels)

        def job(step, should_stop):
            segmenter = context.segmenter_for(request)
            return run, propagate(
                segmenter, run.axis, run.start, run.end, run.conditioning, direction=direction, from_index=from_index,
                on_slice=step, should_stop=should_stop, region=run.region,
            )  # fmt: skip

        context.say("Propagating…")
        self.run.start(
            job, self._on_propagated, "Propagating", run.end - run.start + 1, bar=request.download,
            on_finished=lambda: self._run_ended(run),
        )  # fmt: skip

    @property
    def current_run(self) -> RunHandle | None:
        return self.run.current

    def cancel_runs(self, *_) -> None:
        """Stop the propagation at its next slice, quietly (the main widget calls this when closed)."""
        self.run.cancel()

    def layer_removed(self) -> None:
        """The running propagation's labels layer removed: stop it now (it will write nothing)."""
        running = self.session.running
        if running is not None and running.labels not in self.viewer.layers:
            self.cancel_runs()

    def _on_propagated(self, run_and_result) -> None:
        """Write every finished slice's objects into the run's labels layer as one undoable step."""
        run, result = run_and_result
        context, labels = self.context, run.labels
        try:
            self.session.check_current(run)
            if labels not in self.viewer.layers:
                raise InputError(
                    f"The labels layer '{labels.name}' was removed during the propagation: nothing was written."
                )
            if tuple(labels.data.shape) != context.image_shape():
                raise InputError(
                    f"The labels layer '{labels.name}' changed shape during the propagation: nothing was written."
                )
        except RwthSamError as error:
            return context.report_error(error)
        overwrite = context.overwrite

        def write(step):
            applied = self.session.apply(run, result, labels.data, overwrite, step)
            return applied.changes, applied

        def written(applied, voxels: int) -> None:
            if labels not in self.viewer.layers:
                raise InputError(f"The labels layer '{labels.name}' was removed while the result was written: "
                                 "nothing was written.")  # fmt: skip
            self.session.applied(run, result)
            context.show_preview(None, None)  # the result is in the labels layer now
            for obj in self.session.objects:
                context.record_class(labels, obj.value, context.profile_class(obj.name))
            to_check = describe_flags(self.session.flags)
            context.keep(run_summary(result, voxels, applied.edited) + (f" {to_check}." if to_check else ""))

        write_in_worker(
            self.run, labels, write, written, "Writing the propagation", len(result.finished),
            on_finished=lambda: self._run_ended(run, writing=True),
        )  # fmt: skip
        self.writing = run
        context.say(f"Writing {len(result.finished)} slices into '{labels.name}'…")

    def _run_ended(self, run, writing: bool = False) -> None:
        """A propagation's end, or the end of writing its result: the session's run is over after both."""
        if writing or self.writing is not run:
            self.writing = None
            self.session.run_finished(run)

    def go_to_next_flag(self) -> None:
        """Show the next flagged slice after the current one (wrapping around), with its reasons."""
        if not self.session.flags:
            return
        try:
            current = self._current_plane().index
        except RwthSamError as error:
            return self.context.report_error(error)
        index, reasons = self.session.next_flag(current)
        self._go_to(index)
        self.context.say(f"Slice {index}: {reasons}")
