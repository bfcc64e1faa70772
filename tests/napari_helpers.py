"""Driving the widget in a real napari viewer through napari's own mouse and key machinery.

Mouse events are sent to the vispy canvas at pixel positions, so napari maps them to world
coordinates and calls the widget's mouse callbacks exactly as for a user's click.

napari has no public way to send canvas events or to read a layer's undo history, so this is the one
module of the tests that reaches into napari: only through the accessors below, each listed in
``NAPARI_INTERNALS``, which ``test_napari_internals.py`` checks one by one. A napari release that
changes one fails there, saying which and what for, instead of somewhere in a GUI test.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import napari
import numpy as np
from vispy.util import keys

import rwth_sam
from rwth_sam.core.labels.profile_store import PROFILES
from rwth_sam.ui.widget import VOLUME_MODE

from conftest import ORACLE, SAM2_TINY_256, OraclePredictor

SCREENSHOTS = Path(__file__).resolve().parents[1] / "screenshots"

NAPARI_INTERNALS = {
    "Window._qt_viewer": "the QtViewer, whose canvas and key map get the events",
    "QtViewer.canvas._scene_canvas.events": "vispy mouse events at canvas pixels, as a user's mouse sends them",
    "VispyCanvas._map_canvas2world": "checking that a canvas pixel maps back to the intended world point",
    "QtViewer._key_map_handler": "key presses through napari's own key map",
    "Labels._undo_history": "what one submit stores for undo",
    "progress._all_instances": "the open progress bars (those napari's activity dock lists)",
    "viewer_model.get_preferred_reader": "a remembered reader choice, without writing the user's napari settings",
    "Window._qt_window": "napari's main window, placed on the screen as a window manager would (screen_fit_driver)",
}


def qt_viewer(viewer):
    return viewer.window._qt_viewer


def main_window(viewer):
    return viewer.window._qt_window


def canvas_widget(viewer):
    """The Qt widget napari draws the canvas in."""
    return qt_viewer(viewer).canvas.native


def canvas_events(viewer):
    return qt_viewer(viewer).canvas._scene_canvas.events


def key_map_handler(viewer):
    return qt_viewer(viewer)._key_map_handler


def open_progress_bars() -> set:
    """napari's progress bars open now."""
    from napari.utils import progress

    return set(progress._all_instances)


def remember_reader(monkeypatch, plugin: str) -> None:
    """Make napari open every path with ``plugin``, as after the user ticked "remember this choice"
    (napari's settings would do it, but they are saved to the user's real settings file)."""
    monkeypatch.setattr("napari.components.viewer_model.get_preferred_reader", lambda path: plugin)


def last_undo_step(labels):
    """The newest entry of the layer's undo history (napari keeps it private)."""
    return labels._undo_history[-1]


def dock(viewer, checkpoint):
    _, widget = viewer.window.add_plugin_dock_widget("rwth-sam", "Segment Anything (SAM)")
    widget.model.value = SAM2_TINY_256
    widget.checkpoint.value = checkpoint
    widget.device.value = "cpu"
    return widget


def canvas_position(viewer, world_point):
    """Canvas pixel (x, y) showing a world point, through the canvas's own transform (checked both ways)."""
    canvas = qt_viewer(viewer).canvas
    view = canvas.view
    row_axis, col_axis = viewer.dims.displayed
    transform = view.transform * view.scene.transform
    position = tuple(transform.map([world_point[col_axis], world_point[row_axis]])[:2])
    mapped = np.asarray(canvas._map_canvas2world(position, view))
    np.testing.assert_allclose(mapped[[row_axis, col_axis]], np.asarray(world_point)[[row_axis, col_axis]], atol=1e-3)
    return position


def middle_click(viewer, world_point, *modifiers):
    events = canvas_events(viewer)
    position = canvas_position(viewer, world_point)
    press = events.mouse_press(pos=position, button=3, modifiers=modifiers)
    events.mouse_release(pos=position, button=3, modifiers=modifiers, press_event=press)


def middle_drag(viewer, start, end, *modifiers, during=None):
    events = canvas_events(viewer)
    begin, finish = canvas_position(viewer, start), canvas_position(viewer, end)
    press = events.mouse_press(pos=begin, button=3, modifiers=modifiers)
    for t in (0.5, 1.0):
        position = tuple(b + t * (f - b) for b, f in zip(begin, finish))
        events.mouse_move(pos=position, button=3, buttons=[3], modifiers=modifiers, press_event=press)
    if during is not None:
        during()
    events.mouse_release(pos=finish, button=3, modifiers=modifiers, press_event=press)


def wait_idle(qtbot, widget, timeout=60_000):
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=timeout)


def press_key(viewer, key):
    """A key press through napari's own key-map handler, which the canvas feeds with Qt key events."""
    from app_model.types import KeyBinding

    handler = key_map_handler(viewer)
    handler.press_key(KeyBinding.from_str(key))
    handler.release_key(KeyBinding.from_str(key))


def left_click(viewer, world_point):
    events = canvas_events(viewer)
    position = canvas_position(viewer, world_point)
    press = events.mouse_press(pos=position, button=1, modifiers=())
    events.mouse_release(pos=position, button=1, modifiers=(), press_event=press)


def teach_oracle(data, truth, axis, window) -> None:
    """Give ``OraclePredictor`` the true labels of every slice along ``axis``, keyed as the widget shows
    the slice to it (through ``window``, the image's intensity window)."""
    data = np.asarray(data)
    OraclePredictor.truth_by_slice = {}
    for index in range(data.shape[axis]):
        plane = rwth_sam.SlicePlane.of(data.shape, axis, index)
        rgb = rwth_sam.to_rgb(np.asarray(plane.take(data)), window)
        OraclePredictor.truth_by_slice[hashlib.blake2b(rgb.tobytes()).digest()] = np.asarray(plane.take(truth))


def slice_point(image, axis, index) -> float:
    """The world coordinate along ``axis`` of the image's slice ``index`` (its scale and translate)."""
    point = np.zeros(image.ndim)
    point[axis] = index
    return float(image.data_to_world(point)[axis])


def run_3d(viewer, qtbot, checkpoint, ct, truth, order, start, end, organs, scale=(3.0, 3.0, 3.0), on_disk_above=None):
    """Drive the 3D buttons in order, as a user would; returns the widget, the labels layer and the 3D panel.

    ``ct`` is an array, added as the image "ct" with ``scale``, or an image layer already open (a file read
    with its geometry keeps its scale and translate); ``truth`` is on the image's array grid. ``on_disk_above``:
    the widget's "Labels on disk above" (GB) when the labels layer is made."""
    viewer.window.resize(1500, 950)
    if isinstance(ct, napari.layers.Image):
        image = ct
        image.contrast_limits = (-160, 240)
    else:
        image = viewer.add_image(ct, name="ct", scale=scale, contrast_limits=(-160, 240))
    ct = np.asarray(image.data)
    _, widget = viewer.window.add_plugin_dock_widget("rwth-sam", "Segment Anything (SAM)")
    widget.model.value, widget.checkpoint.value, widget.device.value = ORACLE, checkpoint, "cpu"
    if on_disk_above is not None:
        widget.labels_on_disk_above.value = on_disk_above
    labels = widget.create_labels_layer()
    widget.profile.value = "Abdominal CT"
    widget.mode.value = VOLUME_MODE
    viewer.dims.order = order
    axis = order[0]
    teach_oracle(ct, truth, axis, rwth_sam.IntensityWindow(*image.contrast_limits))

    panel = widget.volume
    for index, button in ((end, panel.set_end), (start, panel.set_start)):  # either order
        viewer.dims.set_point(axis, slice_point(image, axis, index))
        button.clicked.emit()
    middle = (start + end) // 2
    assert panel.range_label.value == f"Slices {start}–{end} (axis {axis}), middle {middle}"
    shown = image.world_to_data(viewer.dims.point)[axis]
    assert round(shown) == middle, "the view did not move to the middle slice"

    middle_plane = rwth_sam.SlicePlane.of(ct.shape, axis, middle)
    for name in organs:
        cls = PROFILES.get("Abdominal CT").class_by_name(name)
        widget.classes.value = cls
        rows, cols = np.nonzero(np.asarray(middle_plane.take(truth)) == cls.value)
        corner0, corner1 = np.zeros(3), np.zeros(3)
        corner0[axis] = corner1[axis] = middle
        corner0[[middle_plane.row_axis, middle_plane.col_axis]] = rows.min() - 1, cols.min() - 1
        corner1[[middle_plane.row_axis, middle_plane.col_axis]] = rows.max() + 1, cols.max() + 1
        middle_drag(viewer, image.data_to_world(corner0), image.data_to_world(corner1), keys.SHIFT)
        panel.add_box.clicked.emit()
    assert len(panel.session.objects) == len(organs)
    panel.segment_middle.clicked.emit()
    wait_idle(qtbot, widget)
    assert set(panel.session.conditioning[middle]) == set(range(1, len(organs) + 1))
    return widget, labels, panel
