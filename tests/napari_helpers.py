"""Driving the widget in a real napari viewer through napari's own mouse and key machinery.

Mouse events are sent to the vispy canvas at pixel positions, so napari maps them to world
coordinates and calls the widget's mouse callbacks exactly as for a user's click.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from conftest import SAM2_TINY_256

SCREENSHOTS = Path(__file__).resolve().parents[1] / "screenshots"


def dock(viewer, checkpoint):
    _, widget = viewer.window.add_plugin_dock_widget("rwth-sam", "Segment Anything (SAM)")
    widget.model.value = SAM2_TINY_256
    widget.checkpoint.value = checkpoint
    widget.device.value = "cpu"
    return widget


def canvas_position(viewer, world_point):
    """Canvas pixel (x, y) showing a world point, through the canvas's own transform (checked both ways)."""
    canvas = viewer.window._qt_viewer.canvas
    view = canvas.view
    row_axis, col_axis = viewer.dims.displayed
    transform = view.transform * view.scene.transform
    position = tuple(transform.map([world_point[col_axis], world_point[row_axis]])[:2])
    mapped = np.asarray(canvas._map_canvas2world(position, view))
    np.testing.assert_allclose(mapped[[row_axis, col_axis]], np.asarray(world_point)[[row_axis, col_axis]], atol=1e-3)
    return position


def middle_click(viewer, world_point, *modifiers):
    events = viewer.window._qt_viewer.canvas._scene_canvas.events
    position = canvas_position(viewer, world_point)
    press = events.mouse_press(pos=position, button=3, modifiers=modifiers)
    events.mouse_release(pos=position, button=3, modifiers=modifiers, press_event=press)


def middle_drag(viewer, start, end, *modifiers, during=None):
    events = viewer.window._qt_viewer.canvas._scene_canvas.events
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

    handler = viewer.window._qt_viewer._key_map_handler
    handler.press_key(KeyBinding.from_str(key))
    handler.release_key(KeyBinding.from_str(key))


def left_click(viewer, world_point):
    events = viewer.window._qt_viewer.canvas._scene_canvas.events
    position = canvas_position(viewer, world_point)
    press = events.mouse_press(pos=position, button=1, modifiers=())
    events.mouse_release(pos=position, button=1, modifiers=(), press_event=press)
