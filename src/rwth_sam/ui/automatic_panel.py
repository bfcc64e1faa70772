"""Automatic mode: SAM's automatic mask generator on the shown slice or the whole volume.

Every generator setting is a control with its explanation as tooltip, bounded as the core bounds it,
and the panel shows what a slice will cost (prompt points, decoder batches, crops) before a run.
Results go into a labels layer of their own (one per image, every write undoable, never offered as
a target); the user then clicks an object there (left click) and assigns it to the selected class,
which writes it into the labels layer like a submit. Both runs are napari generator workers with a
progress bar of their own and *Cancel* (their ``quit()``), which stops them between decoder batches:
a cancelled slice writes nothing, a cancelled volume keeps finished slices. While one runs, the run
buttons are disabled. A result whose image was removed or changed during the run is not written.
The panel uses nothing of the main widget but its ``PanelContext``.
"""

from __future__ import annotations

import functools
from dataclasses import fields

import napari
import numpy as np
from magicgui.widgets import Container, FloatSpinBox, Label, PushButton, SpinBox

from rwth_sam.core.coordinates import SlicePlane, range_block
from rwth_sam.core.embeddings.segmenter import spatial_shape
from rwth_sam.core.errors import InputError, RwthSamError
from rwth_sam.core.labels.block_writes import slice_pieces, write_blocks
from rwth_sam.core.labels.labelling import writable
from rwth_sam.core.tasks.automatic import (
    HIGHEST,
    LARGE_PROMPT_POINTS,
    LOWEST,
    SETTING_HELP,
    AutomaticSettings,
    generate_slice,
    generate_volume,
    setting_label,
)
from rwth_sam.ui.context import PanelContext, full_resolution
from rwth_sam.ui.labels_io import commit_block, write_in_worker
from rwth_sam.ui.layout import collapsible
from rwth_sam.ui.reporting import guarded
from rwth_sam.ui.runner import AUTOMATIC, PanelRun, Run

RESULT_METADATA = {"rwth_sam_helper": "automatic result"}  # the main widget offers no such layer as a target
_FLOAT_STEPS = {"stability_score_offset": 0.1}
_FLOAT_HIGHEST = {"stability_score_offset": 10.0, "crop_overlap_ratio": 0.99}  # the others are fractions (at most 1)
_INT32_MAX = 2**31 - 1  # the largest value a spin box holds (min mask region area has no bound of its own)


def _reported(what: str):
    """``guarded`` for a panel method: whatever it raises becomes a short message in the status line."""

    def decorate(method):
        @functools.wraps(method)
        def run(self, *args, **kwargs):
            return guarded(what, self.context.report_error)(method)(self, *args, **kwargs)

        return run

    return decorate


class AutomaticPanel(Container):
    def __init__(self, context: PanelContext):
        super().__init__(labels=True)
        self.context = context
        self.viewer: napari.viewer.Viewer = context.viewer
        self.setting_controls = {}
        for item in fields(AutomaticSettings):
            label = setting_label(item.name)
            if item.type in ("int", int):
                high = HIGHEST.get(item.name, _INT32_MAX)
                control = SpinBox(label=label, min=LOWEST[item.name], max=high, value=item.default)
            else:
                high = _FLOAT_HIGHEST.get(item.name, 1.0)
                step = _FLOAT_STEPS.get(item.name, 0.01)
                control = FloatSpinBox(label=label, min=0.0, max=high, step=step, value=item.default)
            control.tooltip = SETTING_HELP[item.name]
            control.changed.connect(self._show_workload)
            self.setting_controls[item.name] = control
        self.workload = Label()
        self.workload.tooltip = "What one slice costs with these settings; the time grows with the prompt points."
        self.run_slice = PushButton(text="Segment everything on this slice")
        self.run_volume = PushButton(text="Segment everything in the volume")
        self.run = PanelRun(context.runner, AUTOMATIC, (self.run_slice, self.run_volume), context.say, context.reveal)
        self.cancel = self.run.cancel_button
        self.selected = Label(value="Left click an object of the result to select it")
        self.assign = PushButton(text="Assign selected object to class")
        self.settings_box = collapsible("Generator settings", list(self.setting_controls.values()))
        self.extend([self.workload, self.run_slice, self.run_volume, self.run.row, self.selected, self.assign])
        self.native.layout().insertWidget(0, self.settings_box)

        self.run_slice.changed.connect(self.segment_slice)
        self.run_volume.changed.connect(self.segment_volume)
        self.assign.changed.connect(self.assign_selected)
        self.result_layer: napari.layers.Labels | None = None
        self._result_image = None  # the image layer the result layer belongs to
        self._highest_id = 0  # the highest object id written into it (its max over the volume cost 0.1 s a run)
        self.selected_object: int | None = None
        self._show_workload()

    def settings(self) -> AutomaticSettings:
        return AutomaticSettings(**{name: control.value for name, control in self.setting_controls.items()})

    def _show_workload(self, *_) -> None:
        """The cost of a slice, before the user starts a run that could take minutes (or the reason
        the settings are refused)."""
        try:
            work = self.settings().workload()
        except RwthSamError as error:
            self.workload.value = f"Not runnable: {error}"
            return
        crops = "the whole slice" if work.crops == 1 else f"{work.crops} crops"
        text = f"Per slice: {work.points:,} prompt points in {work.batches:,} decoder batches, {crops}"
        if work.points > LARGE_PROMPT_POINTS:
            default = AutomaticSettings().workload().points
            text += f" (large: {work.points / default:.0f} times SAM's default, a slice takes long)"
        self.workload.value = text

    @property
    def current_run(self) -> Run | None:
        return self.run.current

    def cancel_runs(self, *_) -> None:
        """Stop the automatic run at its next decoder batch (the main widget calls this when closed, so
        the process need not wait for a run nobody sees, and when the image changes)."""
        self.run.cancel()

    # ----------------------------------------------------------------- runs
    @_reported("Segment everything on this slice")
    def segment_slice(self) -> None:
        context = self.context
        self._refuse_a_second_run()
        settings = self.settings()
        plane = context.plane_under(self.viewer.dims.point)[0]
        image = context.image_layer
        request = context.model_request()
        started = self._started(image)

        def job(step, should_stop):
            segmenter = context.segmenter_for(request)
            rgb = segmenter.slice_rgb(plane)
            return plane, generate_slice(segmenter.predictor, rgb, settings, on_batch=step, should_stop=should_stop)

        context.say("Segmenting everything on this slice…")
        self._run(job, lambda result: self._on_slice_result(image, started, result), "Segmenting this slice",
                  settings.workload().batches, request)  # fmt: skip

    @_reported("Writing the automatic result")
    def _on_slice_result(self, image, started, result) -> None:
        plane, objects = result
        self._check_image(image, started)
        if objects is None:
            self.context.say("Automatic: cancelled, nothing was written.")
            return
        layer, note = self._result_for(image, started)
        new = np.zeros(plane.alone.shape, dtype=layer.data.dtype)
        offset = self._highest_id  # ids after those of earlier runs, so none merge
        plane.alone.take(new)[...] = np.where(objects > 0, objects + offset, 0)
        commit_block(layer, plane.block, new)
        self._highest_id = offset + int(objects.max(initial=0))
        self.context.keep(f"Automatic: {int(objects.max(initial=0))} objects on this slice.{note}")

    @_reported("Segment everything in the volume")
    def segment_volume(self) -> None:
        context = self.context
        self._refuse_a_second_run()
        settings = self.settings()
        plane = context.plane_under(self.viewer.dims.point)[0]
        if plane.axis is None:
            raise InputError("The image is 2D: use 'Segment everything on this slice'.")
        image = context.image_layer
        request = context.model_request()
        started = self._started(image)

        def job(step, should_stop):
            segmenter = context.segmenter_for(request)
            return generate_volume(segmenter, plane.axis, settings, on_slice=step, should_stop=should_stop)

        context.say("Segmenting everything in the volume…")
        self._run(job, lambda result: self._on_volume_result(image, started, result), "Segmenting the volume",
                  plane.shape[plane.axis], request)  # fmt: skip

    @_reported("Writing the automatic result")
    def _on_volume_result(self, image, started, result) -> None:
        self._check_image(image, started)
        if not result.finished:
            self.context.say("Automatic: cancelled before the first slice finished, nothing was written.")
            return
        layer, note = self._result_for(image, started)
        data, axis = layer.data, result.axis

        def change(after: np.ndarray, first: int, last: int) -> None:  # the finished slices replaced whole
            for index in range(first, last + 1):
                SlicePlane.of(after.shape, axis, index - first).take(after)[...] = result.slice_labels(index)

        def write(step):
            block_of = functools.partial(range_block, data.ndim, axis)
            return write_blocks(data, slice_pieces(data, result.finished, block_of, change, step)), None

        def written(_, voxels: int) -> None:
            self._highest_id = max(self._highest_id, result.highest)
            state = "cancelled, kept" if result.cancelled else "done:"
            self.context.keep(f"Automatic {state} {len(result.finished)} slices, {result.highest} objects.{note}")

        write_in_worker(self.run, layer, write, written, "Writing the automatic result", len(result.finished))
        self.context.say(f"Writing {len(result.finished)} slices into '{layer.name}'…")

    @property
    def running(self) -> bool:
        """One automatic run at a time: they share Cancel."""
        return self.current_run is not None

    def _refuse_a_second_run(self) -> None:
        if self.running:
            raise InputError("An automatic run is in progress: wait for it to finish or Cancel it.")

    def _started(self, image) -> dict:
        """What a run's result is checked against when it comes back."""
        result = self.result_layer if self.result_layer in self.viewer.layers else None
        return dict(data=full_resolution(image), result=result)

    def _run(self, job, on_result, description: str, total: int, request) -> None:
        """Start a run (its own progress bar, *Cancel* its ``quit()``; the request's download bar
        while the model downloads); the run buttons wait for its end."""
        self.run.start(job, on_result, description, total, bar=request.download)

    def _check_image(self, image, started: dict) -> None:
        """Refuse a result whose image was removed or given other data while the run went (the
        widget then cancels the run too, so this comes first: it says why)."""
        if image not in self.viewer.layers:
            raise InputError(f"The image '{image.name}' was removed during the automatic run: nothing was written.")
        if full_resolution(image) is not started["data"]:
            raise InputError(
                f"The image '{image.name}' got new data during the automatic run: nothing was written; run it again."
            )

    def _result_for(self, image, started: dict) -> tuple[napari.layers.Labels, str]:
        """The result layer to write a finished run into, and a note for the status."""
        deleted = started["result"] is not None and started["result"] not in self.viewer.layers
        layer = self._result(image)
        return layer, " The result layer was deleted during the run: this result is in a new one." if deleted else ""

    def _result(self, image) -> napari.layers.Labels:
        """The automatic result layer of ``image``, on its grid (made on first use, and again when
        it was deleted or belongs to another image)."""
        shape = spatial_shape(full_resolution(image), image.rgb)
        layer = self.result_layer
        current = layer is not None and layer in self.viewer.layers and self._result_image == image
        if not current or tuple(layer.data.shape) != shape:
            layer = self.context.add_labels_for(
                image, f"{image.name} automatic", shape, opacity=0.5, metadata=dict(RESULT_METADATA)
            )
            self.result_layer = layer
            self._result_image = image
            self._highest_id = 0
            self.selected_object = None
            self.selected.value = "Left click an object of the result to select it"
            self.viewer.layers.selection.active = image
        return layer

    # ----------------------------------------------------------------- classes
    def select_object_at(self, world_position) -> None:
        """Left click in automatic mode: the result object under the mouse becomes the selection."""
        layer = self.result_layer
        if layer is None or layer not in self.viewer.layers:
            return
        value = layer.get_value(world_position, world=True)
        if value is None or int(value) == 0:
            self.selected_object = None
            self.selected.value = "No object there: left click an object of the result"
            layer.show_selected_label = False
            return
        self.selected_object = int(value)
        layer.selected_label = self.selected_object
        layer.show_selected_label = True
        plane = self.context.plane_under(world_position)[0]
        on_slice = int((np.asarray(plane.take(layer.data)) == value).sum())  # one slice: a volume is too slow
        self.selected.value = f"Selected object {self.selected_object} ({on_slice} pixels on this slice)"

    @_reported("Assigning the object to the class")
    def assign_selected(self) -> None:
        """Write the selected object into the labels layer with the chosen class, as one undoable step."""
        context = self.context
        result = self.result_layer
        if self.selected_object is None or result is None:
            raise InputError("Select an object of the automatic result first (left click).")
        if result not in self.viewer.layers:
            raise InputError("The automatic result layer was deleted: run automatic segmentation again.")
        labels = context.target_labels()
        if tuple(result.data.shape) != tuple(labels.data.shape):
            raise InputError(
                f"The automatic result has shape {tuple(result.data.shape)} but the labels layer '{labels.name}' "
                f"has {tuple(labels.data.shape)}: run automatic segmentation on this image again."
            )
        self._refuse_a_second_run()
        source, target, selected = result.data, labels.data, self.selected_object
        value, overwrite = context.submit_value(labels), context.overwrite
        block_of = functools.partial(range_block, target.ndim, 0)
        counts = {"written": 0, "kept": 0}

        def change(after: np.ndarray, first: int, last: int) -> None:
            where = np.asarray(source[block_of(first, last)]) == selected
            allowed = where & writable(after, value, overwrite)
            after[allowed] = value
            counts["written"] += int(allowed.sum())
            counts["kept"] += int(where.sum() - allowed.sum())

        def write(step):  # the whole result is read, slab by slab: in a worker
            slabs = range(target.shape[0])
            return write_blocks(target, slice_pieces(target, slabs, block_of, change, step)), None

        def written(_, voxels: int) -> None:
            if not counts["written"] + counts["kept"]:
                raise InputError(f"Object {selected} is no longer in the automatic result: select another.")
            context.record_submission(labels, value, counts["written"], counts["kept"])

        write_in_worker(self.run, labels, write, written, "Assigning the object", target.shape[0])
