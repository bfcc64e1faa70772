"""Automatic mode: SAM's automatic mask generator on the shown slice or the whole volume.

Every generator setting is a control with its explanation as tooltip. Results go into a labels
layer of their own (one per image, every write undoable); the user then clicks an object there
(left click) and assigns it to the selected class, which writes it into the labels layer like a
submit. The volume run reports progress per slice and can be cancelled, keeping finished slices.
"""

from __future__ import annotations

from dataclasses import fields

import napari
import numpy as np
from magicgui.widgets import Container, FloatSpinBox, Label, PushButton, SpinBox
from superqt import QCollapsible

from ..core.automatic import SETTING_HELP, AutomaticSettings, generate_slice, generate_volume, setting_label
from ..core.coordinates import compact_indices
from ..core.errors import InputError, RwthSamError
from .labels_io import commit_block, commit_voxels
from .runner import AUTOMATIC, SliceProgress

_FLOAT_STEPS = {"stability_score_offset": 0.1}


class AutomaticPanel(Container):
    def __init__(self, owner):
        super().__init__(labels=True)
        self.owner = owner
        self.viewer: napari.viewer.Viewer = owner.viewer
        self.setting_controls = {}
        for item in fields(AutomaticSettings):
            if item.type in ("int", int):
                control = SpinBox(label=setting_label(item.name), min=0, max=100_000, value=item.default)
            else:
                control = FloatSpinBox(
                    label=setting_label(item.name), min=0.0, max=10.0, step=_FLOAT_STEPS.get(item.name, 0.01), value=item.default
                )
            control.tooltip = SETTING_HELP[item.name]
            self.setting_controls[item.name] = control
        self.run_slice = PushButton(text="Segment everything on this slice")
        self.run_volume = PushButton(text="Segment everything in the volume")
        self.cancel = PushButton(text="Cancel", enabled=False)
        self.selected = Label(value="Left click an object of the result to select it")
        self.assign = PushButton(text="Assign selected object to class")
        settings = Container(labels=True, widgets=list(self.setting_controls.values()))
        self.settings_box = QCollapsible("Generator settings")
        self.settings_box.addWidget(settings.native)
        self.extend([self.run_slice, self.run_volume, self.cancel, self.selected, self.assign])
        self.native.layout().insertWidget(0, self.settings_box)

        self.run_slice.changed.connect(self.segment_slice)
        self.run_volume.changed.connect(self.segment_volume)
        self.assign.changed.connect(self.assign_selected)
        self.progress = SliceProgress(self.cancel, owner.status)
        self.result_layer: napari.layers.Labels | None = None
        self._highest_id = 0  # the highest object id written into it (its max over the volume cost 0.1 s a run)
        self.selected_object: int | None = None

    def settings(self) -> AutomaticSettings:
        return AutomaticSettings(**{name: control.value for name, control in self.setting_controls.items()})

    # ----------------------------------------------------------------- runs
    def segment_slice(self) -> None:
        owner = self.owner
        try:
            settings = self.settings()
            request = owner.model_request()
            plane = owner.plane_under(self.viewer.dims.point)[0]
        except RwthSamError as error:
            return owner.report_error(error)

        def job():
            segmenter = owner.segmenter_for(request)
            return plane, generate_slice(segmenter.predictor, segmenter.slice_rgb(plane), settings)

        owner.status.value = "Segmenting everything on this slice…"
        owner.runner.submit(AUTOMATIC, job, self._on_slice_result, "Segmenting everything")

    def _on_slice_result(self, result) -> None:
        plane, objects = result
        layer = self._result()
        new = np.zeros(plane.alone.shape, dtype=layer.data.dtype)
        offset = self._highest_id  # ids after those of earlier runs, so none merge
        plane.alone.take(new)[...] = np.where(objects > 0, objects + offset, 0)
        commit_block(layer, plane.block, new)
        self._highest_id = offset + int(objects.max(initial=0))
        self.owner.status.value = f"Automatic: {int(objects.max(initial=0))} objects on this slice."

    def segment_volume(self) -> None:
        owner = self.owner
        try:
            settings = self.settings()
            request = owner.model_request()
            plane = owner.plane_under(self.viewer.dims.point)[0]
            if plane.axis is None:
                raise InputError("The image is 2D: use 'Segment everything on this slice'.")
        except RwthSamError as error:
            return owner.report_error(error)
        self.progress.start(plane.shape[plane.axis], "Segmenting the volume")

        def job():
            segmenter = owner.segmenter_for(request)
            result = generate_volume(
                segmenter, plane.axis, settings, on_slice=self.progress.advanced.emit,
                should_stop=self.progress.cancel_requested.is_set,
            )  # fmt: skip
            return plane.axis, result

        owner.status.value = "Segmenting everything in the volume…"
        owner.runner.submit(AUTOMATIC, job, self._on_volume_result, "Segmenting the volume", on_finished=self.progress.finish)

    def _on_volume_result(self, axis_and_result) -> None:
        axis, result = axis_and_result
        layer = self._result()
        region = np.zeros(layer.data.shape, dtype=bool)
        for index in result.finished:
            np.moveaxis(region, axis, 0)[index] = True
        commit_block(layer, (), result.labels.astype(layer.data.dtype), region)
        self._highest_id = max(self._highest_id, int(result.labels.max(initial=0)))
        state = "cancelled, kept" if result.cancelled else "done:"
        self.owner.status.value = f"Automatic {state} {len(result.finished)} slices, {int(result.labels.max())} objects."

    def _result(self) -> napari.layers.Labels:
        """The automatic result layer of the current image, on its grid (made on first use)."""
        image = self.owner.image_layer
        shape = self.owner.image_shape()
        layer = self.result_layer
        if layer is None or layer not in self.viewer.layers or tuple(layer.data.shape) != shape:
            layer = self.viewer.add_labels(
                np.zeros(shape, dtype=np.int32), name=f"{image.name} automatic", scale=image.scale,
                translate=image.translate, opacity=0.5,
            )  # fmt: skip
            self.result_layer = layer
            self._highest_id = 0
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
        self.selected.value = f"Selected object {self.selected_object} ({int((layer.data == value).sum())} voxels)"

    def assign_selected(self) -> None:
        """Write the selected object into the labels layer with the chosen class, as one undoable step."""
        owner = self.owner
        if self.selected_object is None or self.result_layer is None:
            return owner.report_error(InputError("Select an object of the automatic result first (left click)."))
        try:
            labels = owner.target_labels()
        except RwthSamError as error:
            return owner.report_error(error)
        value = owner.submit_value(labels)
        data = self.result_layer.data
        indices = compact_indices(np.nonzero(data == self.selected_object), data.shape)
        written, kept = commit_voxels(labels, indices, value, owner.overwrite.value)
        owner.record_submission(labels, value, written, kept)

