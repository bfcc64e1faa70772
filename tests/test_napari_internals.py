"""The napari internals the GUI tests drive napari through (``napari_helpers.NAPARI_INTERNALS``),
one check each: a napari release that changes one fails here, naming it and what it is for."""

from __future__ import annotations

import numpy as np
import pytest

from napari_helpers import (
    NAPARI_INTERNALS,
    canvas_events,
    canvas_widget,
    key_map_handler,
    last_undo_step,
    main_window,
    open_progress_bars,
    qt_viewer,
)

pytestmark = pytest.mark.gui


def _qt_viewer(viewer):
    from napari.qt import QtViewer

    assert isinstance(qt_viewer(viewer), QtViewer)


def _scene_canvas_events(viewer):
    events = canvas_events(viewer)
    for name in ("mouse_press", "mouse_move", "mouse_release"):
        assert callable(getattr(events, name)), f"no {name} emitter"


def _map_canvas2world(viewer):
    canvas = qt_viewer(viewer).canvas
    mapped = canvas._map_canvas2world((10.0, 20.0), canvas.view)
    assert len(mapped) == viewer.dims.ndim


def _key_map_handler(viewer):
    handler = key_map_handler(viewer)
    assert callable(handler.press_key) and callable(handler.release_key)


def _undo_history(viewer):
    labels = viewer.add_labels(np.zeros((4, 8, 8), dtype=np.uint8))
    labels.data_setitem((np.array([1]), np.array([2]), np.array([3])), 5)
    (atom,) = last_undo_step(labels)
    indices, old, new = atom
    assert [int(i[0]) for i in indices] == [1, 2, 3] and np.asarray(old).tolist() == [0] and int(np.max(new)) == 5


def _all_instances(viewer):
    from napari.utils import progress

    with progress(total=2, desc="checking") as bar:
        assert bar in open_progress_bars()
    assert bar not in open_progress_bars()


def _get_preferred_reader(viewer):
    import inspect

    from napari.components import viewer_model

    parameters = list(inspect.signature(viewer_model.get_preferred_reader).parameters)
    assert parameters == ["path"], f"its parameters are {parameters}"
    assert "get_preferred_reader" in inspect.getsource(viewer_model.ViewerModel._open_or_raise_error), (
        "ViewerModel no longer asks it"
    )


def _qt_window(viewer):
    from qtpy.QtWidgets import QMainWindow, QWidget

    assert isinstance(main_window(viewer), QMainWindow)
    assert isinstance(canvas_widget(viewer), QWidget)


CHECKS = {
    "Window._qt_viewer": _qt_viewer,
    "QtViewer.canvas._scene_canvas.events": _scene_canvas_events,
    "VispyCanvas._map_canvas2world": _map_canvas2world,
    "QtViewer._key_map_handler": _key_map_handler,
    "Labels._undo_history": _undo_history,
    "progress._all_instances": _all_instances,
    "viewer_model.get_preferred_reader": _get_preferred_reader,
    "Window._qt_window": _qt_window,
}


def test_every_internal_has_a_check():
    assert set(CHECKS) == set(NAPARI_INTERNALS)


@pytest.mark.parametrize("name", list(NAPARI_INTERNALS))
def test_napari_still_has(viewer, name):
    viewer.add_image(np.zeros((4, 8, 8), dtype=np.uint8))
    try:
        CHECKS[name](viewer)
    except (AttributeError, AssertionError, TypeError, ValueError) as error:
        pytest.fail(
            f"napari changed {name}, which tests/napari_helpers.py relies on for {NAPARI_INTERNALS[name]}: "
            f"{type(error).__name__}: {error}"
        )
