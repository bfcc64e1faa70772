"""The main widget: model, layers and intensity window; click prompts with a live green preview; submit.

Mouse and keys (as in the original RWTH-SAM): middle click adds a positive point, Ctrl+middle click a
negative one, Shift+middle drag draws a box (replacing the previous one); left click selects prompt
points, Ctrl+K deletes the selected ones, Ctrl+Shift+K all prompts; Ctrl+Enter submits; Ctrl+Z and
Ctrl+Shift+Z undo and redo on the labels layer. The prompts and their rules are the core's
``PromptSession``; the widget is its view (it draws the session on its events and forwards the
user's input to it), and every model call runs in a napari thread worker through ``LatestJobRunner``.
"""

from __future__ import annotations

import gc
import os
from dataclasses import replace
from pathlib import Path

import napari
import numpy as np
import pandas as pd
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    PushButton,
    SpinBox,
    create_widget,
)
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.notifications import show_error
from qtpy.QtCore import QEvent, QObject, QTimer
from qtpy.QtWidgets import QFileDialog
from superqt.utils import qdebounced

from rwth_sam.core.coordinates import LayerGeometry, SlicePlane, plane_at
from rwth_sam.core.embeddings.disk_cache import DiskEmbeddingCache, default_disk_cache_dir
from rwth_sam.core.embeddings.identity import SessionIdentity
from rwth_sam.core.embeddings.segmenter import spatial_shape
from rwth_sam.core.embeddings.workspace import Workspace
from rwth_sam.core.errors import InputError, RwthSamError
from rwth_sam.core.files.geometry import GEOMETRY_KEY, SourceGeometry
from rwth_sam.core.labels.disk_labels import (
    create_disk_labels,
    default_labels_folder,
    free_labels_path,
    labels_bytes,
    writable_folder,
)
from rwth_sam.core.labels.labelling import check_label_value, check_writable, next_instance_id
from rwth_sam.core.labels.profile_store import PROFILES
from rwth_sam.core.models.builtin import import_upstream_packages
from rwth_sam.core.models.device import available_devices, leave_a_core_free
from rwth_sam.core.models.registry import get_model_spec, model_specs
from rwth_sam.core.models.weights import CHECKPOINT_ENV_VAR, MODEL_ENV_VAR, is_cached, startup_choice
from rwth_sam.core.preprocessing import WINDOW_CHOICES
from rwth_sam.core.tasks.prompt_session import PromptSession
from rwth_sam.ui.automatic_panel import AutomaticPanel
from rwth_sam.ui.context import ModelRequest, full_resolution
from rwth_sam.ui.labels_io import check_unlocked, commit_mask, lock
from rwth_sam.ui.layout import VerticalScrollArea, collapsible, compact_layout, side_by_side
from rwth_sam.ui.messages import Messages
from rwth_sam.ui.profile_widget import apply_profile
from rwth_sam.ui.reporting import as_user_error, guarded
from rwth_sam.ui.runner import EMBED_AHEAD, PREDICT, JobBar, LatestJobRunner
from rwth_sam.ui.samples import REFERENCE_LABELS
from rwth_sam.ui.volume_files import LABELS_FILE_FILTER, default_labels_path, write_labels
from rwth_sam.ui.volume_panel import VolumePanel

LEFT_BUTTON, MIDDLE_BUTTON = 1, 3
PREVIEW_COLOR = "lime"
POSITIVE_COLOR = "lime"
NEGATIVE_COLOR = "red"
SELECTED_COLOR = "yellow"
PREFETCH_RADIUS = 2  # neighbours embedded on each side of the shown slice
WINDOW_SETTLE_MS = 300  # contrast sliders fire many events per drag: re-segment once the user pauses
CLICK_MODE, AUTOMATIC_MODE, VOLUME_MODE = "Click prompts", "Automatic (everything)", "3D propagation"
HELP = (
    "Middle click: + point · Ctrl+middle: − point · Shift+middle drag: box\n"
    "Left click: select point · Ctrl+K: delete selected · Ctrl+Shift+K: delete all · Ctrl+Enter: submit"
)
WHOLE_SLICE, VISIBLE_REGION, BOX_REGION = "Whole slice", "Visible region (zoomed in)", "Region around the box"
BOX_REGION_MARGIN = 2.0  # the region around a box is this many times the box's larger side...
BOX_REGION_MIN = 256  # ...and at least this many pixels a side (the model needs context around the object)
HELPER_LAYER = "rwth_sam_helper"  # metadata key of the layers the widget makes for itself (never targets)
KEY_BINDINGS = {
    "Control-K": "delete_selected_points",
    "Control-Shift-K": "clear_prompts",
    "Control-Enter": "submit",
    "Control-Z": "undo",
    "Control-Shift-Z": "redo",
}


def model_choices(_widget=None) -> list[tuple[str, str]]:
    """Registry entries as (text, name), the text telling whether weights are cached and their size."""
    choices = []
    for spec in model_specs():
        if spec.weights is None:
            note = "local checkpoint"
        else:
            state = "cached" if is_cached(spec.weights) else "download"
            note = f"{spec.weights.size_text}, {state}"
        choices.append((f"{spec.title} ({note})", spec.name))
    return choices


class SamWidget(Container):
    """Plugins > RWTH SAM > Segment Anything (SAM).

    The automatic and 3D panels see it as a ``PanelContext`` (``ui/context.py``), nothing more.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(labels=False)
        import_upstream_packages()  # here rather than in the worker at the first click
        leave_a_core_free()  # for napari's drawing while a model runs
        gc.freeze()  # napari's and torch's objects out of the collector's full passes (300 ms, all threads stopped)
        self.viewer = napari_viewer
        self.closed = False
        self._saving = False  # one save at a time
        self.workspace = Workspace()
        self.runner = LatestJobRunner(on_error=self.report_error)
        self.prompts = PromptSession()
        self._model_loads = 0  # bumped whenever the model is to be loaded afresh: part of the identity
        self._preview_layer = self._points_layer = self._box_layer = None
        self._preview_plane: SlicePlane | None = None  # the slice the preview layer holds
        self._drawn_box = None  # (layer, plane, box) the box layer shows
        self._watched_image = None
        self._window_settled = qdebounced(
            self.guard("Changing the intensity window", self._on_window_changed), timeout=WINDOW_SETTLE_MS
        )

        self.model = ComboBox(label="Model", choices=model_choices)
        self.checkpoint = FileEdit(label="Checkpoint", mode="r", filter="*.pt *.pth", value="")
        self.checkpoint.tooltip = "Optional: a local checkpoint file instead of the official download"
        self.device = ComboBox(label="Device", choices=available_devices())
        self.image_picker = create_widget(annotation=napari.layers.Image, label="Image")
        self.labels_picker = ComboBox(label="Labels", choices=self._labels_choices)
        self._user_picked = None  # the labels layer the user last picked in the list
        self.labels_picker.native.activated.connect(self._on_labels_picked)
        self.new_labels = PushButton(text="New labels layer for image")
        self.save_labels = PushButton(text="Save labels…")
        self.labels_on_disk_above = FloatSpinBox(label="Labels on disk above", min=0.0, max=1e6, step=0.5, value=0.5)
        self.labels_on_disk_above.native.setSuffix(" GB")
        self.labels_on_disk_above.tooltip = (
            "New labels layers larger than this (4 bytes a voxel) are a zarr folder on disk beside the image "
            "(or in the user data folder), written chunk by chunk, instead of an array in memory"
        )
        self.save_labels.tooltip = (
            "Save the labels layer onto its image's source grid: NIfTI, NRRD, MetaImage, 3D Slicer .seg.nrrd "
            "(one segment per class) or TIFF, with a class table beside it"
        )
        self.window = ComboBox(label="Intensity", choices=list(WINDOW_CHOICES))
        self.window.tooltip = "How intensities become the 8-bit image SAM sees (one window for the whole volume)"
        self.model_sees = ComboBox(
            label="Model sees", choices=[WHOLE_SLICE, VISIBLE_REGION, BOX_REGION], value=WHOLE_SLICE
        )
        self.model_sees.tooltip = (
            "Click prompts on a slice larger than the model's input: the whole slice (resized to the input), "
            "or a region at native resolution: the part of the slice in view when you start prompting, or a "
            "region around the box you draw first. The region keeps until the prompts are submitted or cleared."
        )
        self.resolution = Label(value="")
        self.keep_on_disk = CheckBox(text="Keep embeddings on disk", value=False)
        self.keep_on_disk.tooltip = (
            f"Store slice embeddings in {default_disk_cache_dir()} (zarr), so a volume opened again "
            "in a later session needs no encoder run"
        )
        self.profile = ComboBox(label="Profile", choices=self._profile_choices)
        self.profile.tooltip = "Segmentation profile: the classes of this dataset (see the profile widget)"
        self.classes = ComboBox(label="Class", choices=self._class_choices)
        self.label_value = SpinBox(label="Label value", min=1, max=2**31 - 1, value=1)
        self.instance_mode = CheckBox(text="Instance mode", value=False)
        self.instance_mode.tooltip = (
            "A new label id for each submitted object; its class is recorded in the layer's features"
        )
        self.overwrite_labels = CheckBox(text="Overwrite other labels", value=False)
        self.messages = Messages(HELP)  # before the panels, which report into it
        self.status = self.messages.status
        self.mode = ComboBox(label="Mode", choices=[CLICK_MODE, AUTOMATIC_MODE, VOLUME_MODE], value=CLICK_MODE)
        self.automatic = AutomaticPanel(self)
        self.automatic.visible = False
        self.volume = VolumePanel(self)
        self.volume.visible = False
        self.submit_button = PushButton(text="Submit preview")
        self.clear_button = PushButton(text="Clear prompts")
        self.click_buttons = side_by_side(self.submit_button, self.clear_button)
        # the dock: the messages on top, always in view; the controls below them scroll on a small screen,
        # the options used less often collapsed
        self.controls = Container(labels=True)
        self.controls.extend(
            [
                self.model, self.image_picker, self.labels_picker, side_by_side(self.new_labels, self.save_labels),
                self.profile, self.classes, self.window, self.model_sees, self.resolution, self.mode,
                self.click_buttons, self.automatic, self.volume,
            ]
        )  # fmt: skip
        self.more_options = collapsible(
            "More options",
            [
                self.checkpoint, self.device, self.label_value, self.instance_mode, self.overwrite_labels,
                self.labels_on_disk_above, self.keep_on_disk,
            ],
        )  # fmt: skip
        self.controls.native.layout().insertWidget(self.controls.index(self.mode), self.more_options)
        self.controls.native.layout().addStretch(1)  # rows packed at the top when there is room to spare
        self.margins = (0, 0, 0, 0)
        self.append(self.messages)
        self.controls_area = VerticalScrollArea(self.controls.native)
        self.native.layout().addWidget(self.controls_area, 1)  # the room left goes to the controls

        self.new_labels.changed.connect(self.guard("Making a labels layer", self.create_labels_layer))
        self.save_labels.changed.connect(self.guard("Saving the labels", self._ask_where_to_save_labels))
        self.mode.changed.connect(self.guard("Switching the mode", self._on_mode_changed))
        self.profile.changed.connect(self.guard("Choosing a profile", self.classes.reset_choices))
        self.classes.changed.connect(self.guard("Choosing a class", self._on_class_changed))
        self.submit_button.changed.connect(self.guard("Submitting", self.submit))
        self.clear_button.changed.connect(self.guard("Clearing the prompts", self.clear_prompts))
        for control in (self.model, self.checkpoint, self.device):
            control.changed.connect(self.guard("Switching the model", self._on_model_changed))
        self.keep_on_disk.changed.connect(self.guard("Switching the disk cache", self._on_keep_on_disk_changed))
        self.image_picker.changed.connect(self.guard("Switching the image", self._on_image_changed))
        self.window.changed.connect(self.guard("Changing the intensity window", self._on_window_changed))
        self.model_sees.changed.connect(self.guard("Choosing what the model sees", self._on_model_sees_changed))
        self.prompts.changed.connect(self.guard("Segmenting", self._on_prompts_changed))
        self.prompts.changed.connect(self.guard("Describing the resolution", self._describe_resolution))
        self.prompts.cleared.connect(self.guard("Describing the resolution", self._describe_resolution))
        self.prompts.predicted.connect(self.guard("Describing the resolution", self._describe_resolution))
        self.prompts.selection_changed.connect(self.guard("Selecting a point", self._draw_prompts))
        self.prompts.predicted.connect(self.guard("Showing the preview", self._on_predicted))
        self.prompts.cleared.connect(self.guard("Clearing the prompts", self._on_prompts_cleared))
        self._on_image_changed()
        self._apply_startup_choice()
        self._describe_resolution()
        # connections to objects that outlive the widget, undone at once when it is closed
        self._on_profiles_changed = self.guard("Updating the profiles", self._on_profiles_changed)
        self._on_mouse = self.guard_mouse(self._on_mouse)
        self._embed_ahead = self.guard("Embedding ahead", self._embed_ahead)
        self._on_layer_removed = self.guard("Removing a layer", self._on_layer_removed)
        PROFILES.changed.connect(self._on_profiles_changed)
        napari_viewer.layers.events.removed.connect(self._on_layer_removed)
        napari_viewer.mouse_drag_callbacks.append(self._on_mouse)
        self._key_handlers = {key: self._key_handler(action) for key, action in KEY_BINDINGS.items()}
        for key, handler in self._key_handlers.items():
            napari_viewer.bind_key(key, handler, overwrite=True)
        napari_viewer.dims.events.current_step.connect(self._embed_ahead)
        self._close_watch = _CloseWatch(self.native, self.close_session)
        compact_layout(self.controls)

    def guard(self, what: str, handler):
        """``handler`` for a GUI signal: whatever it raises becomes a message in the status line."""
        return guarded(what, self.report_error)(handler)

    def say(self, message: str) -> None:
        self.messages.say(message)

    def keep(self, message: str) -> None:
        self.messages.keep(message)

    @property
    def model_loaded(self) -> bool:
        return self.workspace.loaded is not None

    @property
    def overwrite(self) -> bool:
        return self.overwrite_labels.value

    @property
    def selected_class(self):
        return self.classes.value

    def guard_mouse(self, callback):
        """A napari mouse callback (a generator, for drags) whose exceptions become messages."""

        def run(viewer, event):
            try:
                yield from callback(viewer, event)
            except Exception as error:  # noqa: BLE001  (nothing may escape into napari's event loop)
                self.report_error(as_user_error(error, "The mouse action"))

        return run

    def _apply_startup_choice(self) -> None:
        """Start with the model and checkpoint named by $RWTH_SAM_MODEL and $RWTH_SAM_CHECKPOINT."""
        name, checkpoint = startup_choice()
        if name is not None:
            if name in [value for _, value in model_choices()]:
                self.model.value = name
            else:
                self.report_error(InputError(f"${MODEL_ENV_VAR} names no known model: '{name}'."))
        if checkpoint is not None:
            if checkpoint.is_file():
                self.checkpoint.value = checkpoint
            else:
                self.report_error(InputError(f"${CHECKPOINT_ENV_VAR} names no file: {checkpoint}."))

    # ----------------------------------------------------------------- layers
    @property
    def image_layer(self) -> napari.layers.Image | None:
        return self.image_picker.value

    def _labels_choices(self, _widget=None) -> list[tuple[str, napari.layers.Labels]]:
        """The labels layers results can go to: none of the layers rwth-sam makes for itself (the
        preview, the automatic result), which it clears and rewrites; reference labels (the sample's
        truth) last, named so."""
        layers = [
            layer for layer in self.viewer.layers
            if isinstance(layer, napari.layers.Labels) and HELPER_LAYER not in layer.metadata
        ]  # fmt: skip
        working = [(layer.name, layer) for layer in layers if not _is_reference(layer)]
        return working + [(f"{layer.name} (reference)", layer) for layer in layers if _is_reference(layer)]

    def reset_choices(self, *_) -> None:
        """The layers changed: the target is never reference labels while there is another labels layer
        (the newest), unless the user picked them."""
        super().reset_choices()
        self.controls.reset_choices()  # in the scroll area: not a child magicgui knows of
        picked = self.labels_picker.value
        if picked is not None and picked is self._user_picked:
            return
        working = [layer for _, layer in self._labels_choices() if not _is_reference(layer)]
        if working and (picked is None or _is_reference(picked)):
            self.labels_picker.value = working[-1]

    def _on_labels_picked(self, *_) -> None:
        self._user_picked = self.labels_picker.value

    def _geometry(self, layer) -> LayerGeometry:
        return LayerGeometry(tuple(layer.scale), tuple(layer.translate))

    def image_shape(self) -> tuple[int, ...]:
        """The picked image's spatial shape (refusing what cannot be segmented)."""
        layer = self.image_layer
        if layer is None:
            raise InputError("Pick an image layer first.")
        return spatial_shape(full_resolution(layer), layer.rgb)

    def create_labels_layer(self) -> napari.layers.Labels | None:
        """A new, empty labels layer on the image's grid, selected as the target."""
        try:
            shape = self.image_shape()
        except RwthSamError as error:
            return self.report_error(error)
        labels = self.add_labels_for(self.image_layer, f"{self.image_layer.name} labels", shape)
        self.labels_picker.reset_choices()
        self.labels_picker.value = labels
        return labels

    def add_labels_for(self, image: napari.layers.Image, name: str, shape: tuple[int, ...], **layer_options):
        """A new, empty labels layer on ``image``'s grid, carrying its source geometry (saved onto its
        source grid, see ui/volume_files.py): in memory, or a zarr folder on disk when it would take
        more than *Labels on disk above*."""
        source = {GEOMETRY_KEY: image.metadata[GEOMETRY_KEY]} if GEOMETRY_KEY in image.metadata else {}
        metadata = {**source, **layer_options.pop("metadata", {})}
        if labels_bytes(shape) > self.labels_on_disk_above.value * 2**30:
            path = free_labels_path(self._disk_labels_folder(), name)
            settings = {
                "name": name,
                "scale": list(image.scale),
                "translate": list(image.translate),
                "metadata": metadata,
            }
            data = create_disk_labels(path, shape, settings)
            self.keep(f"The labels ({labels_bytes(shape) / 2**30:.1f} GB as uint32) are kept on disk, in {path}.")
        else:
            data = np.zeros(shape, dtype=np.uint32)
        return self.viewer.add_labels(
            data, name=name, scale=image.scale, translate=image.translate, metadata=metadata, **layer_options
        )

    def _disk_labels_folder(self) -> Path:
        """Beside the image's source file when that folder can be written, else the user's data folder."""
        geometry = SourceGeometry.from_metadata(self.image_layer.metadata)
        if geometry is not None and geometry.source:
            source = Path(geometry.source)
            folder = source.parent
            if writable_folder(folder):
                return folder
        return default_labels_folder()

    def _ask_where_to_save_labels(self) -> None:
        labels = self._labels_to_save()
        path, _ = QFileDialog.getSaveFileName(
            self.native, f"Save '{labels.name}'", os.fspath(default_labels_path(labels)), LABELS_FILE_FILTER
        )
        if path:
            self.save_labels_as(path)

    def _labels_to_save(self) -> napari.layers.Labels:
        labels = self.labels_picker.value
        if labels is None or labels not in self.viewer.layers:
            raise InputError("Pick the labels layer to save, or create one with 'New labels layer for image'.")
        return labels

    def save_labels_as(self, path: str | os.PathLike) -> None:
        """Write the picked labels layer to ``path`` onto its image's source grid (the format from the
        name), as *File > Save Selected Layers* does with rwth-sam's writer, but in a worker with a progress
        bar (labels on disk take minutes), the layer locked until it is written."""
        labels = self._labels_to_save()
        if self._saving:
            raise InputError("A save is in progress: wait for it to finish.")
        running = self.volume.session.running
        if (running is not None and running.labels is labels) or (
            self.automatic.running and labels is self.automatic.result_layer
        ):
            raise InputError(f"A run is writing into '{labels.name}': save it when the run is done.")
        data, meta, _ = labels.as_layer_data_tuple()
        release = lock(labels)
        self._saving = True
        self.say(f"Saving '{labels.name}'…")

        def saved(written: list[str]) -> None:
            self.keep(f"Saved '{labels.name}' to {', '.join(Path(item).name for item in written)}.")

        def finished() -> None:
            self._saving = False
            release()

        self.runner.run_beside(
            lambda step: write_labels(os.fspath(path), data, meta, step), saved, f"Saving {Path(path).name}",
            data.shape[0] if data.ndim == 3 else 1, finished,
        )  # fmt: skip

    def target_labels(self) -> napari.layers.Labels:
        """The labels layer results go to, checked against the image's shape."""
        labels = self.labels_picker.value
        if labels is None or labels not in self.viewer.layers:
            raise InputError("Pick a labels layer, or create one with 'New labels layer for image'.")
        check_writable(labels.data, labels.name)
        check_unlocked(labels)
        shape = self.image_shape()
        if tuple(labels.data.shape) != shape:
            raise InputError(
                f"The labels layer '{labels.name}' has shape {tuple(labels.data.shape)} but the image has {shape}; "
                "pick a matching layer or create one with 'New labels layer for image'."
            )
        return labels

    def _helper_layer(self, attribute: str, make, geometry: LayerGeometry):
        """A preview or prompt layer placed at ``geometry``, (re)made when missing or not on the
        image's grid (another scale or number of axes), moved when only its place changed."""
        layer = getattr(self, attribute)
        image = self.image_layer
        if (
            layer is None
            or layer not in self.viewer.layers
            or tuple(layer.scale) != geometry.scale
            or (layer.ndim != geometry.ndim)
        ):
            if layer is not None and layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
            layer = make(geometry)
            setattr(self, attribute, layer)
            self.viewer.layers.selection.active = image
        elif tuple(layer.translate) != geometry.translate:
            layer.translate = geometry.translate
        return layer

    def _marker_size(self) -> float:
        """Prompt markers scale with the image, so they look alike on 64 and 4096 pixel slices."""
        return max(2.0, max(self.image_shape()) / 60)

    def _points(self) -> napari.layers.Points:
        def make(geometry):
            return self.viewer.add_points(
                np.zeros((0, geometry.ndim)), name="SAM prompts", scale=geometry.scale,
                translate=geometry.translate, size=self._marker_size(), border_color="white",
                metadata={HELPER_LAYER: "prompts"},
            )  # fmt: skip

        return self._helper_layer("_points_layer", make, self._geometry(self.image_layer))

    def _box(self) -> napari.layers.Shapes:
        def make(geometry):
            return self.viewer.add_shapes(
                ndim=geometry.ndim, name="SAM box", scale=geometry.scale, translate=geometry.translate,
                edge_color="yellow", face_color="transparent", edge_width=self._marker_size() / 4,
                metadata={HELPER_LAYER: "box"},
            )  # fmt: skip

        return self._helper_layer("_box_layer", make, self._geometry(self.image_layer))

    def _draw_prompts(self, box=None) -> None:
        """Show the prompts (and a box being dragged) on the canvas."""
        plane, state = self.prompts.plane, self.prompts
        points = self._points()
        ndim = points.ndim
        data = np.array([plane.slice_to_data(x, y) for x, y in state.points]).reshape(-1, ndim)
        points.data = data
        points.face_color = [POSITIVE_COLOR if label else NEGATIVE_COLOR for label in state.labels] or "white"
        points.border_color = [SELECTED_COLOR if i in state.selected else "white" for i in range(len(data))] or "white"
        points.border_width = [0.3 if i in state.selected else 0.1 for i in range(len(data))] or 0.1
        box = box if box is not None else state.box
        shapes = self._box()
        drawn = (shapes, plane, box)
        if drawn == self._drawn_box:
            return  # a click leaves the box as it is: redrawing it cost the GUI 15 ms
        shapes.data = []
        if box is not None and plane is not None:
            shapes.add_rectangles(plane.box_corners(box))
        self._drawn_box = drawn

    def show_preview(self, plane: SlicePlane | None, mask: np.ndarray | None) -> napari.layers.Labels | None:
        """Show ``mask`` on ``plane`` as the only thing in the green preview (nothing: clear it).

        The preview layer holds that one slice, placed on it (value 1 is the mask; the brush may
        edit it): showing or clearing a mask costs one slice, whatever the volume's size.
        """
        if plane is None:
            if self._preview_plane is not None and self._preview_layer in self.viewer.layers:
                self._preview_layer.data[...] = 0
                self._preview_layer.refresh()
            return None
        alone = plane.alone
        data = np.zeros(alone.shape, dtype=np.uint8)
        if mask is not None:
            alone.write(data, mask, 1)

        def make(geometry):
            return self.viewer.add_labels(
                data, name="SAM preview", scale=geometry.scale, translate=geometry.translate, opacity=0.5,
                colormap=DirectLabelColormap(color_dict={None: "transparent", 0: "transparent", 1: PREVIEW_COLOR}),
                metadata={HELPER_LAYER: "preview"},
            )  # fmt: skip

        preview = self._helper_layer("_preview_layer", make, self._geometry(self.image_layer).at_slice(plane))
        if preview.data is not data:
            preview.data = data
        self._preview_plane = plane
        return preview

    def preview_mask(self, plane: SlicePlane) -> np.ndarray:
        """The preview's (H, W) mask on ``plane`` as it is now, brush edits included (empty when the
        preview holds another slice)."""
        if plane != self._preview_plane or self._preview_layer not in self.viewer.layers:
            return np.zeros(plane.size, dtype=bool)
        return np.asarray(plane.alone.take(self._preview_layer.data)) != 0

    # ----------------------------------------------------------------- mouse
    def plane_under(self, world_position) -> tuple[SlicePlane, float, float]:
        """The displayed slice of the image at a world position, and (x, y) on it."""
        layer = self.image_layer
        if layer is None:
            raise InputError("Pick an image layer first.")
        return plane_at(world_position, self.viewer.dims.displayed, self._geometry(layer), self.image_shape())

    def _locate(self, world_position) -> tuple[SlicePlane, float, float]:
        """The slice and (x, y) of a click, refusing clicks outside the image."""
        plane, x, y = self.plane_under(world_position)
        if not plane.contains(x, y):
            layer = self.image_layer
            raise InputError(f"The click at ({x:.0f}, {y:.0f}) is outside the image '{layer.name}'.")
        return plane, x, y

    def _on_mouse(self, viewer, event):
        if event.button == LEFT_BUTTON and not event.modifiers:
            if self.mode.value == AUTOMATIC_MODE:
                self.automatic.select_object_at(event.position)
            else:
                self._select_point_at(event.position)
            return
        if event.button != MIDDLE_BUTTON:
            return
        try:
            plane, x, y = self._locate(event.position)
        except RwthSamError as error:
            self.report_error(error)
            return
        modifiers = set(event.modifiers)
        if "Shift" in modifiers:
            yield from self._drag_box(plane, x, y, event)
            return
        plane, x, y = self._in_prompt_region(plane, x, y, new=True)
        self.prompts.add_point(plane, x, y, positive="Control" not in modifiers)

    def _drag_box(self, plane: SlicePlane, x0: float, y0: float, event):
        """Shift+middle drag: the rectangle follows the mouse; on release it becomes the box prompt."""
        if self.model_sees.value != BOX_REGION or not self._box_sets_the_region():
            plane, x0, y0 = self._in_prompt_region(plane, x0, y0, new=True)
        yield
        while event.type == "mouse_move":
            x1, y1 = plane.data_to_slice(self._geometry(self.image_layer).world_to_data(event.position))
            self.prompts.start_plane(plane)
            self._draw_prompts(box=(x0, y0, x1, y1))
            yield
        x1, y1 = plane.data_to_slice(self._geometry(self.image_layer).world_to_data(event.position))
        if self.model_sees.value == BOX_REGION and self._box_sets_the_region():
            plane, (x0, y0, x1, y1) = self._region_around_box(plane, (x0, y0, x1, y1))
        if not self.prompts.set_box(plane, x0, y0, x1, y1):
            self._draw_prompts()  # too small for a box: the dragged rectangle goes

    def _box_sets_the_region(self) -> bool:
        """*Region around the box*: in click mode every box, in 3D mode the first object's box."""
        if self.mode.value == VOLUME_MODE:
            return not self.volume.session.objects
        return self.mode.value == CLICK_MODE

    def _in_prompt_region(self, plane: SlicePlane, x: float, y: float, new: bool = False):
        """A click on the whole slice ``plane`` at (x, y), on the plane the model segments: the 3D
        session's region (every slice of its range), or the prompts' region when the click lies in it;
        with ``new``, in click and 3D mode, a region of the slice in view (*Visible region*); else the
        whole slice."""
        session = self.volume.session
        if self.mode.value == VOLUME_MODE and session.region is not None and plane.axis == session.axis:
            current = replace(plane, region=session.region)  # a 3D session segments its region on every slice
        else:
            current = self.prompts.plane
        if current is not None and current.region is not None and current.whole == plane:
            local = current.data_to_slice(plane.slice_to_data(x, y))
            if current.contains(*local) or not new or self.mode.value == VOLUME_MODE:
                return current, *local
        if not new or self.mode.value == AUTOMATIC_MODE or self.model_sees.value != VISIBLE_REGION:
            return plane, x, y
        region = plane.within(*self._visible_rows_and_columns(plane))
        return (region, *region.data_to_slice(plane.slice_to_data(x, y)))

    def _visible_rows_and_columns(self, plane: SlicePlane) -> tuple[float, float, float, float]:
        """The part of ``plane`` in napari's view (the image layer's corner pixels), as rows and columns."""
        layer = self.image_layer
        corners = np.asarray(layer.corner_pixels, dtype=float)
        if layer.multiscale:  # corner pixels are in the shown level's voxels
            corners = corners * np.asarray(layer.downsample_factors[layer.data_level])
        first, last = corners[0], corners[1] + 1
        return first[plane.row_axis], last[plane.row_axis], first[plane.col_axis], last[plane.col_axis]

    def _region_around_box(self, plane: SlicePlane, box) -> tuple[SlicePlane, tuple[float, ...]]:
        """*Region around the box*: the square region around a box of the whole slice ``plane``, and the
        box in its coordinates."""
        region = plane.square_around(box, BOX_REGION_MARGIN, BOX_REGION_MIN)
        x0, y0, x1, y1 = box
        corner0 = region.data_to_slice(plane.slice_to_data(x0, y0))
        corner1 = region.data_to_slice(plane.slice_to_data(x1, y1))
        return region, (*corner0, *corner1)

    def _select_point_at(self, world_position) -> None:
        """Left click on a prompt point toggles its selection (for Ctrl+K)."""
        if not self.prompts.points or self.image_layer is None:
            return
        try:
            plane, x, y = self._in_prompt_region(*self.plane_under(world_position))
        except RwthSamError:
            return
        self.prompts.toggle_point_near(plane, x, y, radius=self._marker_size())

    def delete_selected_points(self) -> None:
        """Ctrl+K: drop the selected points; the preview is recomputed from what is left."""
        self.prompts.delete_selected()

    # ----------------------------------------------------------------- model work
    def model_request(self) -> ModelRequest:
        """What the worker needs, read on the GUI thread (widgets and layers are not thread-safe),
        with a bar of the job's own when the model must be downloaded (none loaded, no checkpoint,
        the weights not cached)."""
        layer = self.image_layer
        if layer is None:
            raise InputError("Pick an image layer first.")
        name, checkpoint, device = model = self._model_choice()
        weights = get_model_spec(name).weights
        needs_download = not self.model_loaded and checkpoint is None and weights is not None and not is_cached(weights)
        return ModelRequest(
            model=model,
            image=(full_resolution(layer), layer.rgb, self.window.value, tuple(layer.contrast_limits)),
            download=JobBar(f"Downloading {weights.filename}") if needs_download else None,
        )

    def _model_choice(self) -> tuple:
        checkpoint = self.checkpoint.value
        checkpoint = checkpoint if checkpoint and str(checkpoint) not in ("", ".") else None
        return self.model.value, checkpoint, self.device.value

    def _bind_sessions(self) -> None:
        """The prompts and the 3D session are about this image (layer and data), model and window:
        one identity, built here whenever one of them changes; each session decides what a change
        means to it (another image or model starts afresh, another window keeps the prompts)."""
        layer = self.image_layer
        model = (*self._model_choice(), self._model_loads)
        identity = SessionIdentity.of(
            layer, None if layer is None else full_resolution(layer), model, self.window.value,
            None if layer is None else layer.contrast_limits,
        )  # fmt: skip
        self.prompts.bind(identity)
        self.volume.session.bind(identity)

    def segmenter_for(self, request: ModelRequest):
        """Runs in the worker: loads the model on first use, downloading it into the job's bar."""
        name, checkpoint, device = request.model
        loaded = self.workspace.loaded
        bar = None if request.download is None else request.download.bar()
        predictor = self.workspace.predictor(name, checkpoint, device, progressbar=False if bar is None else bar)
        if predictor is not loaded:
            gc.freeze()  # the new model's objects too
        image, rgb, window_choice, contrast_limits = request.image
        return self.workspace.segmenter(predictor, image, rgb, window_choice, contrast_limits)

    def _on_prompts_changed(self) -> None:
        """The prompts were edited: draw them and predict their mask (the newest request wins)."""
        self._draw_prompts()
        request = self.prompts.request()
        if request is None:
            self.show_preview(None, None)
            return
        try:
            model = self.model_request()
        except RwthSamError as error:
            return self.report_error(error)
        self.say("Segmenting…" if self.model_loaded else "Loading the model, then segmenting…")

        def job():
            return request, request.predict(self.segmenter_for(model))

        self.runner.submit(PREDICT, job, lambda result: self.prompts.accept(*result), "Segmenting", bar=model.download)

    def _on_predicted(self, prediction) -> None:
        self.show_preview(self.prompts.plane, prediction.mask)
        self.say(f"Preview: {int(prediction.mask.sum())} pixels, score {prediction.scores.max():.2f}")

    def _on_prompts_cleared(self) -> None:
        if self.image_layer is None:
            return
        if self._points_layer is not None:
            self._draw_prompts()
        if self._preview_layer is not None:
            self.show_preview(None, None)

    def _embed_ahead(self, event=None) -> None:
        """Embed the slice now shown, then its neighbours, once a model is loaded.

        The prefetch stops as soon as anything newer waits (a click, or the user moved on).
        """
        if self.workspace.loaded is None or self.image_layer is None:
            return
        try:
            request = self.model_request()
            plane = self.plane_under(self.viewer.dims.point)[0]
        except RwthSamError:
            return

        def job():
            self.segmenter_for(request).prefetch(plane, PREFETCH_RADIUS, should_stop=lambda: self.runner.has_waiting)

        self.runner.submit(EMBED_AHEAD, job, lambda _: None, "Embedding slice", bar=request.download)

    # ----------------------------------------------------------------- actions
    def submit(self) -> None:
        """Write the preview into the labels layer (one undoable step) with the chosen label value."""
        state = self.prompts
        if state.prediction is None or state.plane is None:
            return self.report_error(InputError("There is no preview to submit: prompt an object first."))
        try:
            labels = self.target_labels()
            value = self.submit_value(labels)
        except RwthSamError as error:
            return self.report_error(error)
        written, kept = commit_mask(labels, state.plane, state.prediction.mask, value, self.overwrite)
        self.clear_prompts()
        self.record_submission(labels, value, written, kept)

    def submit_value(self, labels: napari.layers.Labels, taken=()) -> int:
        """The label value of the next submit: a new id in instance mode (above ``taken`` too), else
        the class's value; refused when the layer's dtype cannot hold it."""
        if self.instance_mode.value:
            value = max([next_instance_id(labels.data), *(value + 1 for value in taken)])
        else:
            value = self.label_value.value
        return check_label_value(value, labels.data.dtype, labels.name, instance=self.instance_mode.value)

    def record_submission(self, labels: napari.layers.Labels, value: int, written: int, kept: int) -> None:
        """After a write: name it by its class, and tell the user what happened."""
        segment_class = self.classes.value
        self.record_class(labels, value, segment_class)
        note = f", kept {kept} pixels of other labels" if kept else ""
        named = f" ({segment_class.name})" if segment_class is not None else ""
        self.say(f"Submitted {written} pixels as label {value}{named}{note}.")

    def record_class(self, labels, value: int, segment_class) -> None:
        """Class mode colours the layer by the profile; instance mode adds the object's class to its features."""
        profile = PROFILES.get(self.profile.value) if self.profile.value else None
        if profile is None or segment_class is None:
            return
        if not self.instance_mode.value:
            apply_profile(profile, labels)
            return
        features = labels.features
        if "index" not in features.columns:
            features = pd.DataFrame({"index": [0], "class": ["background"]})
        row = pd.DataFrame({"index": [value], "class": [segment_class.name]})
        labels.features = pd.concat([features[features["index"] != value], row], ignore_index=True)

    # ----------------------------------------------------------------- classes
    def _profile_choices(self, _widget=None) -> list[tuple[str, str | None]]:
        return [("No profile: label value below", None)] + [(name, name) for name in PROFILES.names]

    def _class_choices(self, _widget=None) -> list[tuple[str, object]]:
        profile = PROFILES.get(self.profile.value) if self.profile.value else None
        if profile is None:
            return []
        return [(f"{item.name} ({item.value})", item) for item in profile.classes]

    def _on_profiles_changed(self) -> None:
        self.profile.reset_choices()
        self.classes.reset_choices()

    def _on_class_changed(self, segment_class) -> None:
        if segment_class is not None:
            self.label_value.value = segment_class.value

    def clear_prompts(self, *_) -> None:
        self.prompts.clear()
        self.say(HELP)

    def _on_mode_changed(self, mode: str) -> None:
        self.automatic.visible = mode == AUTOMATIC_MODE
        self.volume.visible = mode == VOLUME_MODE
        self.submit_button.visible = mode == CLICK_MODE
        self.clear_button.visible = mode != AUTOMATIC_MODE
        run_controls = {CLICK_MODE: self.click_buttons, AUTOMATIC_MODE: self.automatic.run.row,
                        VOLUME_MODE: self.volume.run.row}  # fmt: skip
        self.reveal(run_controls[mode])

    def reveal(self, control) -> None:
        """Scroll the dock so that ``control`` (a mode's run buttons, a run's progress and *Cancel*) is in
        view on a screen too small for the whole dock, once the layout has settled."""

        def scroll() -> None:
            if not self.closed:
                self.controls_area.ensureWidgetVisible(control.native)

        QTimer.singleShot(0, scroll)

    def profile_class(self, name: str):
        """The selected profile's class of that name, if any."""
        profile = PROFILES.get(self.profile.value) if self.profile.value else None
        return None if profile is None else profile.class_by_name(name)

    def undo(self) -> None:
        """Ctrl+Z when the labels layer is not the active one (then napari's own binding answers)."""
        if self.labels_picker.value is not None:
            self.labels_picker.value.undo()

    def redo(self) -> None:
        if self.labels_picker.value is not None:
            self.labels_picker.value.redo()

    def _key_handler(self, action: str):
        run = self.guard(action.replace("_", " ").capitalize(), lambda: getattr(self, action)())

        def handler(viewer):
            run()

        handler.__name__ = action
        return handler

    def _on_model_changed(self, *_) -> None:
        """The model is loaded afresh at the next job: another model for the sessions, even under the same name."""
        self.workspace.reset()
        self._model_loads += 1
        self._bind_sessions()
        self.say(HELP)

    def _on_keep_on_disk_changed(self, keep: bool) -> None:
        self.workspace.disk_cache = DiskEmbeddingCache(default_disk_cache_dir()) if keep else None
        self._on_model_changed()  # the model's identity on disk is set when it loads

    def _on_image_changed(self, *_) -> None:
        self._bind_sessions()
        self.say(HELP)
        self.automatic.cancel_runs()  # its result would be refused: stop it now
        self._watch_image(self.image_picker.value)
        if self._watched_image is not None:
            self._make_helper_layers()

    def _on_layer_removed(self, *_) -> None:
        """The picked image removed: magicgui says nothing when its picker is left empty, so the
        widget looks itself (its prompts, previews and 3D session were about that image). A
        propagation whose labels layer went stops at once."""
        self.image_picker.reset_choices()
        if self._watched_image is not None and self._watched_image not in self.viewer.layers:
            self._on_image_changed()
        self.volume.layer_removed()

    def _watch_image(self, layer) -> None:
        """Follow the picked image's contrast limits and data (only that image's)."""
        if self._watched_image is not None:
            self._watched_image.events.contrast_limits.disconnect(self._window_settled)
            self._watched_image.events.data.disconnect(self._on_image_data_changed)
        self._watched_image = layer
        if layer is not None:
            layer.events.contrast_limits.connect(self._window_settled)
            layer.events.data.connect(self._on_image_data_changed)

    def _on_image_data_changed(self, *_) -> None:
        """The image's data was replaced: prompts, previews and the 3D session were about the old data
        (a prediction still on its way is dropped, as its identity is another)."""
        self._bind_sessions()
        self.say(HELP)
        self._preview_plane = None
        self._make_helper_layers()

    def _make_helper_layers(self) -> None:
        """Make the preview, prompt and box layers now, while nothing waits: napari takes 0.4 s or
        more to make a layer (its GL visuals), which at the first click froze the window."""
        try:
            plane = self.plane_under(self.viewer.dims.point)[0]
        except RwthSamError:
            return  # an image rwth-sam cannot segment: the click will say why
        self._points()
        self._box()
        if self._preview_layer is None or self._preview_layer not in self.viewer.layers or self._preview_plane is None:
            self.show_preview(plane, None)

    def _on_model_sees_changed(self, *_) -> None:
        """Another choice of what the model sees: the prompts of the old one go (their region would mislead)."""
        self.clear_prompts()
        self._describe_resolution()

    def _describe_resolution(self, *_) -> None:
        """What the model sees of the prompted slice, and how large one of its pixels is in the image's."""
        plane = self.prompts.plane
        if plane is None:
            hint = {
                WHOLE_SLICE: "the whole slice, resized to the model's input",
                VISIBLE_REGION: "the part of the slice in view at the first click, at native resolution",
                BOX_REGION: "a region around the first box you draw, at native resolution",
            }
            self.resolution.value = f"Next prompt: {hint[self.model_sees.value]}."
            return
        height, width = plane.size
        where = (
            "the whole slice"
            if plane.region is None
            else f"rows {plane.region[0]}–{plane.region[1]}, columns {plane.region[2]}–{plane.region[3]}"
        )
        text = f"Model sees {width}×{height} px ({where})"
        loaded = self.workspace.loaded
        if loaded is not None:
            text += f": 1 model pixel = {max(height, width) / loaded.input_size:.2f} image pixels"
        self.resolution.value = text + "."

    def _on_window_changed(self, *_) -> None:
        """What the model sees changed: the same prompts are segmented again (embeddings are keyed by window)."""
        self._bind_sessions()
        self._embed_ahead()

    def report_error(self, error: Exception) -> None:
        """Tell the user in the status line and a notification; nothing else changes. (An unexpected
        exception is logged with its traceback and told in one sentence.)"""
        message = str(as_user_error(error, "rwth-sam"))
        if self.closed:
            return
        self.messages.keep(message, error=True)
        show_error(message)

    def close_session(self) -> None:
        """The widget was closed (the dock's close button, or the viewer): stop its runs and undo,
        at once, everything it connected to the viewer, so that a closed widget does nothing and a
        reopened one is the only one listening. Its own helper layers go with it."""
        if self.closed:
            return
        self.closed = True
        self.runner.shut_down()
        self.volume.cancel_runs()
        self.automatic.cancel_runs()
        self._window_settled.cancel()
        viewer = self.viewer
        if self._on_mouse in viewer.mouse_drag_callbacks:
            viewer.mouse_drag_callbacks.remove(self._on_mouse)
        for key, handler in self._key_handlers.items():
            unbound = viewer.bind_key(key, None)
            if unbound is not None and unbound is not handler:  # another widget's binding: keep it
                viewer.bind_key(key, unbound, overwrite=True)
        PROFILES.changed.disconnect(self._on_profiles_changed)
        viewer.dims.events.current_step.disconnect(self._embed_ahead)
        viewer.layers.events.removed.disconnect(self._on_layer_removed)
        for event in ("inserted", "removed", "reordered", "renamed"):  # napari's dock connected these
            getattr(viewer.layers.events, event).disconnect(self.reset_choices)
        self._watch_image(None)
        for layer in (self._preview_layer, self._points_layer, self._box_layer):
            if layer is not None and layer in viewer.layers:
                viewer.layers.remove(layer)
        self._preview_layer = self._points_layer = self._box_layer = None


def _is_reference(layer) -> bool:
    return bool(layer.metadata.get(REFERENCE_LABELS))


def _close_when_destroyed(on_close) -> None:
    try:
        on_close()
    except RuntimeError:  # at exit Qt may have deleted the widget's timers already: nothing is left to stop
        pass


class _CloseWatch(QObject):
    """Calls ``on_close`` when the docked widget is taken out of its dock, or destroyed.

    napari's dock close button (``remove_dock_widget``) only unparents the widget; it is not
    destroyed while Python holds it, so waiting for ``destroyed`` left a closed widget working.
    """

    def __init__(self, widget, on_close):
        super().__init__(widget)
        self._on_close = on_close
        self._docked = widget.parent() is not None
        widget.installEventFilter(self)
        widget.destroyed.connect(lambda *_: _close_when_destroyed(on_close))

    def eventFilter(self, watched, event) -> bool:
        if event.type() == QEvent.Type.ParentChange:
            if watched.parent() is not None:
                self._docked = True
            elif self._docked:
                self._on_close()
        return False
