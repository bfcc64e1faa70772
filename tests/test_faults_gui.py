"""Faults and bad input in a real napari viewer: each case asserts the clear message (or the right
result) and that no user label changed. Catalogue and outcomes: tests/README.md."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import rwth_sam
from rwth_sam.core.labels.profile_store import PROFILES
from rwth_sam.core.models.weights import CACHE_ENV_VAR, Weights
from rwth_sam.core.phantom import battery_phantom
from rwth_sam.ui.widget import HELPER_LAYER, VOLUME_MODE

from conftest import ORACLE, OraclePredictor, stand_in_model
from napari_helpers import dock, middle_click, open_progress_bars, press_key, run_3d, wait_idle

pytestmark = pytest.mark.gui


@pytest.fixture
def clicked(viewer, checkpoint, qtbot):
    """A 2D cell slice, a labels layer holding the user's own label 9, and a preview from one click."""
    volume, _ = battery_phantom(shape=(3, 64, 64))
    image = viewer.add_image(volume[1], name="slice")
    widget = dock(viewer, checkpoint)
    labels = widget.create_labels_layer()
    labels.data[:8, :8] = 9
    middle_click(viewer, image.data_to_world((32, 32)))
    wait_idle(qtbot, widget)
    assert widget.prompts.prediction is not None
    return widget, image, labels


def liver_session(viewer, qtbot, checkpoint):
    """The oracle's 3D session on a synthetic liver (slices 2–17), middle slice segmented."""
    z, y, x = np.mgrid[:20, :48, :56]
    truth = np.zeros((20, 48, 56), np.uint8)
    liver = PROFILES.get("Abdominal CT").class_by_name("liver").value
    truth[((z - 9.5) / 12) ** 2 + ((y - 24) / 16) ** 2 + ((x - 28) / 20) ** 2 <= 1] = liver
    ct = truth.astype(np.int16) * 40 - 100 + (z * 3).astype(np.int16)
    widget, labels, panel = run_3d(viewer, qtbot, checkpoint, ct, truth, (0, 1, 2), 2, 17, ["liver"], (1.0, 1.0, 1.0))
    return widget, labels, panel, truth, liver


def on_slice(panel, done_count, action):
    """Run ``action`` on the GUI thread once the running propagation has finished ``done_count`` slices."""

    def act(done, total):
        if done == done_count:
            action()

    panel.current_run.advanced.connect(act)


def start_buttons(panel):
    """The 3D buttons that would change the session under a running propagation."""
    return [panel.full, panel.correct, panel.segment_middle, panel.set_start, panel.set_end, panel.add_box]


def open_bars(before=frozenset()):
    """The napari progress bars open now, but those in ``before``."""
    return open_progress_bars() - set(before)


# ----------------------------------------------------------------------------- labels are never lost
@pytest.mark.parametrize("edit", ["brush", "fill", "another plugin"])
def test_after_undo_the_users_own_edits_survive_a_correction(viewer, qtbot, oracle_checkpoint, edit):
    """Full segmentation, Ctrl+Z, the user paints where the result was (brush, fill or another
    plugin's data_setitem); a correction on another slice re-propagates over that slice and must
    leave every voxel the user set as it is (before: 4 960 of 5 202 painted voxels were zeroed)."""
    widget, labels, panel, truth, liver = liver_session(viewer, qtbot, oracle_checkpoint)
    panel.full.clicked.emit()
    wait_idle(qtbot, widget)
    assert (labels.data[12] == liver).any()
    labels.undo()
    assert not labels.data.any()
    if edit == "brush":
        labels.selected_label = liver
        labels.brush_size = 9
        labels.paint((12, 24, 28), liver)
    elif edit == "fill":
        labels.data_setitem(np.nonzero(truth == liver), 3)  # one region to fill
        labels.selected_label = liver
        labels.fill((12, 24, 28), liver)
    else:
        labels.data_setitem(tuple(axis.ravel() for axis in np.nonzero(truth[12:13] == liver)), liver)
        labels.data_setitem((np.full(10, 12) + 0, np.arange(10) + 20, np.arange(10) + 20), liver)
    users = labels.data.copy()
    assert (users[12] == liver).any()

    viewer.dims.set_point(0, 10)
    panel.edit.clicked.emit()
    preview = widget._preview_layer
    rows, cols = np.nonzero(preview.data[0])
    preview.data_setitem((np.zeros(len(rows), int), rows, cols), 0)  # erase the object on slice 10 …
    preview.data_setitem((np.zeros(25, int), *np.mgrid[20:25, 20:25].reshape(2, -1)), 1)  # … but a small part
    panel.correct.clicked.emit()
    wait_idle(qtbot, widget)
    assert "Propagation done" in widget.status.value
    changed = (labels.data != users) & (users != 0)
    assert not changed.any(), f"{int(changed.sum())} voxels the user set were changed"
    if edit != "fill":
        assert "edited since the last run keep their labels: 12" in widget.status.value


def test_the_widgets_own_layers_are_never_targets(viewer, checkpoint, qtbot):
    """With no labels layer, the picker offered the preview and Submit wrote into it ('Submitted 2042
    pixels as label 1'), to be wiped at the next clear."""
    volume, _ = battery_phantom(shape=(3, 64, 64))
    image = viewer.add_image(volume[1], name="slice")
    widget = dock(viewer, checkpoint)
    middle_click(viewer, image.data_to_world((32, 32)))
    wait_idle(qtbot, widget)
    helpers = [layer for layer in viewer.layers if HELPER_LAYER in layer.metadata]
    assert {layer.name for layer in helpers} == {"SAM preview", "SAM prompts", "SAM box"}
    assert widget.labels_picker.choices == ()
    preview = widget._preview_layer.data.copy()
    widget.submit_button.clicked.emit()
    assert widget.status.value == "Pick a labels layer, or create one with 'New labels layer for image'."
    assert np.array_equal(widget._preview_layer.data, preview)


def test_a_labels_layer_removed_before_submit_is_not_written(clicked, viewer):
    widget, image, labels = clicked
    viewer.layers.remove(labels)
    widget.submit_button.clicked.emit()
    assert "Pick a labels layer" in widget.status.value
    assert not [layer for layer in viewer.layers if layer.name.endswith("labels")]


@pytest.mark.parametrize(
    "fault, message",
    [
        ("labels removed", "The labels layer 'ct labels' was removed during the propagation: nothing was written."),
        ("model changed", "The model changed during the propagation: it was stopped and nothing was written."),
        ("image data replaced", "The image's data changed during the propagation"),
        ("image removed", "The image changed during the propagation: it was stopped and nothing was written."),
    ],
)
def test_a_propagation_whose_target_or_model_changed_writes_nothing(
    viewer, qtbot, oracle_checkpoint, monkeypatch, fault, message
):
    """Before: a labels layer deleted during the run ended 'done: 8 slices' with nothing kept; a
    model switched mid-run finished silently with the old one. Now the run stops at the next slice."""
    widget, labels, panel, truth, liver = liver_session(viewer, qtbot, oracle_checkpoint)
    monkeypatch.setattr(OraclePredictor, "seconds_per_mask", 0.1)
    done = []
    image = viewer.layers["ct"]
    others = {layer.name: np.array(layer.data) for layer in viewer.layers if layer is not image}
    actions = {
        "labels removed": lambda: viewer.layers.remove(labels),
        "model changed": lambda: setattr(widget.device, "value", "cpu") or widget.model.changed.emit(ORACLE),
        "image data replaced": lambda: setattr(image, "data", image.data[:, :40]),
        "image removed": lambda: viewer.layers.remove(image),
    }
    panel.full.clicked.emit()
    panel.current_run.advanced.connect(lambda count, total: done.append(count))
    on_slice(panel, 2, actions[fault])
    wait_idle(qtbot, widget)
    assert message in widget.status.value
    assert max(done) < 16, "the run must stop soon after"
    if fault != "labels removed":
        assert not labels.data.any()
    assert panel.current_run is None and not panel.cancel.enabled
    assert all(button.enabled for button in start_buttons(panel)), "the 3D buttons must work again"
    for layer in viewer.layers:
        if layer.name in others and HELPER_LAYER not in layer.metadata:
            assert np.array_equal(layer.data, others[layer.name]), f"{layer.name} changed"


def test_a_second_full_segmentation_while_one_runs_is_refused(viewer, qtbot, oracle_checkpoint, monkeypatch):
    """Before, the second run's bar leaked and the first run's end closed it and disabled its Cancel."""
    widget, labels, panel, truth, liver = liver_session(viewer, qtbot, oracle_checkpoint)
    monkeypatch.setattr(OraclePredictor, "seconds_per_mask", 0.05)
    said = []
    before = open_bars()
    panel.full.clicked.emit()
    on_slice(panel, 1, lambda: (panel.full.clicked.emit(), said.append((widget.status.value, panel.cancel.enabled))))
    wait_idle(qtbot, widget)
    assert said == [("A propagation is running: wait for it, or cancel it first.", True)]
    assert "Propagation done: 16 slices" in widget.status.value
    assert panel.current_run is None and not panel.cancel.enabled
    qtbot.waitUntil(lambda: not open_bars(before), timeout=5_000)
    assert np.array_equal(labels.data[2:18] == liver, truth[2:18] == liver)


def test_a_propagation_shows_one_bar_and_its_start_buttons_wait_for_its_end(
    viewer, qtbot, oracle_checkpoint, monkeypatch
):
    """Before: the 3D panel's own bar and the runner's showed side by side, and Full segmentation,
    Segment middle slice, Set start/end and Add box stayed enabled under the running propagation."""
    before = open_bars()
    widget, labels, panel, truth, liver = liver_session(viewer, qtbot, oracle_checkpoint)
    monkeypatch.setattr(OraclePredictor, "seconds_per_mask", 0.03)
    during = []

    def sample():
        if panel.session.running is not None:
            bars = sorted(bar.desc for bar in open_bars(before))
            during.append((bars, [button.enabled for button in start_buttons(panel)], panel.cancel.enabled))
        return not widget.runner.busy

    panel.full.clicked.emit()
    qtbot.waitUntil(sample, timeout=60_000)
    assert "Propagation done: 16 slices" in widget.status.value
    assert len(during) > 3, "the run was not seen while it went"
    assert all(len(bars) <= 1 for bars, _, _ in during), f"more than one progress bar: {during}"
    assert any(bars and bars[0].startswith("Propagating") for bars, _, _ in during), "the run had no bar"
    assert all(not any(enabled) for _, enabled, _ in during), "a start button was enabled during the run"
    assert all(cancel for bars, _, cancel in during if bars and bars[0].startswith("Propagating"))
    assert all(not cancel for bars, _, cancel in during if bars and bars[0].startswith("Writing")), (
        "writing the result cannot be cancelled halfway"
    )
    assert all(button.enabled for button in start_buttons(panel)) and not panel.cancel.enabled
    qtbot.waitUntil(lambda: not open_bars(before), timeout=5_000)


# ----------------------------------------------------------------------------- a closed widget does nothing
def test_a_closed_widget_is_disconnected_at_once_and_a_reopened_one_works_alone(viewer, checkpoint, qtbot):
    volume, _ = battery_phantom(shape=(3, 64, 64))
    image = viewer.add_image(volume[1], name="slice")
    widget = dock(viewer, checkpoint)
    labels = widget.create_labels_layer()
    callbacks = len(viewer.mouse_drag_callbacks)
    widget.native.parent().titleBarWidget().close_button.click()  # the dock's close button
    assert widget.closed
    assert len(viewer.mouse_drag_callbacks) == callbacks - 1
    assert not [layer for layer in viewer.layers if HELPER_LAYER in layer.metadata], "helper layers stay behind"
    middle_click(viewer, image.data_to_world((32, 32)))
    press_key(viewer, "Control-Enter")
    assert not widget.runner.busy and widget.prompts.prediction is None
    assert not labels.data.any()

    reopened = dock(viewer, checkpoint)
    assert reopened is not widget
    assert len(viewer.mouse_drag_callbacks) == callbacks
    reopened.labels_picker.value = labels
    middle_click(viewer, image.data_to_world((32, 32)))
    wait_idle(qtbot, reopened)
    press_key(viewer, "Control-Enter")
    assert reopened.status.value.startswith("Submitted") and labels.data.any()


# ----------------------------------------------------------------------------- clear messages, no tracebacks
@pytest.mark.parametrize(
    "case, words",
    [
        ("label value 300 on uint8", "cannot hold label value 300: uint8 holds 1 to 255"),
        ("label value 200 on int8", "cannot hold label value 200: int8 holds 1 to 127"),
        ("instance mode on uint8 at 255", "has no free label id left: 255"),
        ("read-only labels array", "is read-only"),
    ],
)
def test_labels_that_cannot_take_the_result_are_refused_and_unchanged(clicked, viewer, case, words):
    widget, image, labels = clicked
    if case.endswith("on int8"):
        labels.data = labels.data.astype(np.int8)
        widget.label_value.value = 200
    elif case.startswith("label value"):
        labels.data = labels.data.astype(np.uint8)
        widget.label_value.value = 300
    elif case.startswith("instance"):
        labels.data = labels.data.astype(np.uint8)
        labels.data[0, 0] = 255
        widget.instance_mode.value = True
    else:
        labels.data.flags.writeable = False
    before = labels.data.copy()
    press_key(viewer, "Control-Enter")
    assert words in widget.status.value and "labels layer 'slice labels'" in widget.status.value
    assert np.array_equal(labels.data, before)
    assert widget.prompts.prediction is not None, "the preview stays, to submit elsewhere"


@pytest.mark.parametrize("shape", ["another shape", "the same shape"])
def test_a_click_whose_image_data_is_replaced_meanwhile_is_dropped(viewer, checkpoint, qtbot, shape):
    """Before: the prediction of the old data was stored, the preview failed with a traceback, and a
    later submit wrote a mask the user never saw."""
    volume, _ = battery_phantom(shape=(3, 64, 64))
    image = viewer.add_image(volume[1], name="slice")
    widget = dock(viewer, checkpoint)
    labels = widget.create_labels_layer()
    middle_click(viewer, image.data_to_world((32, 32)))
    image.data = volume[2, :48] if shape == "another shape" else volume[2]
    wait_idle(qtbot, widget)
    assert widget.prompts.prediction is None and widget.prompts.empty
    assert not widget._preview_layer.data.any()
    assert widget._preview_layer.data.shape == image.data.shape
    press_key(viewer, "Control-Enter")
    assert widget.status.value == "There is no preview to submit: prompt an object first."
    assert not labels.data.any()
    middle_click(viewer, image.data_to_world((20, 32)))
    wait_idle(qtbot, widget)
    assert widget.prompts.prediction.mask.shape == image.data.shape, "the next click segments the new data"


class FailingPredictor(OraclePredictor):
    def _embed(self, rgb):
        raise RuntimeError("CUDA error: an illegal memory access was encountered " + "x" * 300)


@pytest.fixture
def failing_model(tmp_path):
    name = "failing (tests)"
    for path in stand_in_model(name, FailingPredictor, tmp_path):
        yield name, path


def test_an_unexpected_model_error_is_one_short_message_and_logged(viewer, qtbot, failing_model, caplog):
    name, path = failing_model
    volume, _ = battery_phantom(shape=(3, 64, 64))
    image = viewer.add_image(volume[1], name="slice")
    widget = dock(viewer, path)
    widget.model.value, widget.checkpoint.value = name, path
    labels = widget.create_labels_layer()
    middle_click(viewer, image.data_to_world((32, 32)))
    wait_idle(qtbot, widget)
    message = widget.status.value
    assert message.startswith("Segmenting failed (RuntimeError: CUDA error: an illegal memory access")
    assert message.endswith("…). Nothing was changed.") and len(message) < 220
    assert "Traceback" in caplog.text and "illegal memory access" in caplog.text
    assert not labels.data.any()


@pytest.fixture
def offline(viewer, monkeypatch, tmp_path):
    """A model whose weights are not cached and cannot be downloaded, picked in a docked widget on a 2D slice."""
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path))
    spec = rwth_sam.get_model_spec("mobile_sam_vit_t")
    weights = Weights(url="http://127.0.0.1:9/mobile_sam.pt", sha256="0" * 64, size=40_000_000, filename="m.pt")
    rwth_sam.register_model(
        rwth_sam.ModelSpec(
            name="offline (tests)", family=spec.family, title="Offline", build=spec.build,
            make_predictor=spec.make_predictor, weights=weights,
        ),
        replace=True,
    )  # fmt: skip
    try:
        volume, _ = battery_phantom(shape=(3, 64, 64))
        image = viewer.add_image(volume[1], name="slice")
        _, widget = viewer.window.add_plugin_dock_widget("rwth-sam", "Segment Anything (SAM)")
        widget.model.value, widget.device.value = "offline (tests)", "cpu"
        yield widget, image
    finally:
        rwth_sam.unregister_model("offline (tests)")


def test_failed_downloads_leave_no_progress_bar_open(viewer, qtbot, offline):
    """Offline, every click opened a download bar that stayed open after the download failed."""
    widget, image = offline
    open_before = len(open_progress_bars())
    for y in (20, 40):
        middle_click(viewer, image.data_to_world((y, 32)))
        wait_idle(qtbot, widget)
        assert "m.pt" in widget.status.value or "download" in widget.status.value.lower()
    qtbot.waitUntil(lambda: len(open_progress_bars()) == open_before, timeout=5000)


def test_a_click_dropped_while_the_model_downloads_leaves_no_bar_behind(viewer, qtbot, offline):
    """A job that may download owns its bar from its submission on: the second click's job, dropped
    unrun by the third, must close its bar (the third has one of its own)."""
    widget, image = offline
    gate, load = threading.Event(), widget.segmenter_for

    def slow_first_segmenter(request):
        gate.wait(20)
        return load(request)

    widget.segmenter_for = slow_first_segmenter
    before = open_bars()

    def downloads():
        return [bar.desc for bar in open_bars(before) if bar.desc.startswith("Downloading")]

    for y in (20, 30, 40):
        middle_click(viewer, image.data_to_world((y, 32)))
        qtbot.wait(100)  # each waiting job's bar is shown before the next click
    assert downloads() == ["Downloading m.pt"] * 2, "the running job's bar and the waiting one's, not the dropped one's"
    gate.set()
    wait_idle(qtbot, widget)
    assert "m.pt" in widget.status.value or "download" in widget.status.value.lower()
    qtbot.waitUntil(lambda: not open_bars(before), timeout=5000)


@pytest.mark.parametrize(
    "action, message",
    [
        ("submit with no preview", "There is no preview to submit: prompt an object first."),
        ("3D range on a 2D image", "3D propagation needs a volume; this image is 2D."),
        ("full segmentation before the middle slice", "Segment the middle slice first."),
        ("correction outside the range", "Go to a slice between the start and the end slice first."),
        ("box added without a box", "Set the start and the end slice first."),
    ],
)
def test_actions_out_of_order_say_what_to_do_first(viewer, checkpoint, action, message):
    volume, _ = battery_phantom(shape=(3, 64, 64))
    viewer.add_image(volume[1] if action == "3D range on a 2D image" else volume, name="cell")
    widget = dock(viewer, checkpoint)
    labels = widget.create_labels_layer()
    panel = widget.volume
    widget.mode.value = VOLUME_MODE
    {
        "submit with no preview": lambda: press_key(viewer, "Control-Enter"),
        "3D range on a 2D image": panel.set_start.clicked.emit,
        "full segmentation before the middle slice": panel.full.clicked.emit,
        "correction outside the range": panel.correct.clicked.emit,
        "box added without a box": panel.add_box.clicked.emit,
    }[action]()
    assert widget.status.value == message
    assert not labels.data.any()


def test_closing_the_widget_during_a_propagation_stops_it_and_writes_nothing(
    viewer, qtbot, oracle_checkpoint, monkeypatch
):
    """Before, a run went on after the dock was closed (and napari waited for it at exit)."""
    widget, labels, panel, truth, liver = liver_session(viewer, qtbot, oracle_checkpoint)
    monkeypatch.setattr(OraclePredictor, "seconds_per_mask", 0.1)
    done = []
    before = open_bars()
    panel.full.clicked.emit()
    panel.current_run.advanced.connect(lambda count, total: done.append(count))
    on_slice(panel, 2, widget.native.parent().titleBarWidget().close_button.click)
    qtbot.waitUntil(lambda: widget.runner._worker is None, timeout=60_000)
    assert widget.closed and max(done) < 16, "the run must stop at the next slice"
    assert not labels.data.any()
    assert not open_bars(before), "its progress bar must be closed"
    assert panel.current_run is None and all(button.enabled for button in start_buttons(panel))


def test_a_range_of_one_slice_segments_that_slice_only(viewer, qtbot, oracle_checkpoint):
    z, y, x = np.mgrid[:8, :40, :40]
    truth = np.zeros((8, 40, 40), np.uint8)
    truth[:, 10:30, 12:28] = 5
    ct = truth.astype(np.int16) * 40 - 100 + (z * 3).astype(np.int16)
    widget, labels, panel = run_3d(viewer, qtbot, oracle_checkpoint, ct, truth, (0, 1, 2), 4, 4, ["liver"], (1, 1, 1))
    panel.full.clicked.emit()
    wait_idle(qtbot, widget)
    assert "Propagation done: 1 slices" in widget.status.value
    assert np.array_equal(labels.data[4] == 5, truth[4] == 5)
    assert not np.delete(labels.data, 4, axis=0).any()


@pytest.mark.parametrize("kind", ["dask", "zarr"])
def test_a_lazy_image_gives_the_preview_of_the_same_array_in_memory(viewer, checkpoint, qtbot, kind):
    volume, _ = battery_phantom(shape=(6, 64, 64))
    if kind == "dask":
        dask_array = pytest.importorskip("dask.array")
        lazy = dask_array.from_array(volume, chunks=(1, 32, 32))
    else:
        zarr = pytest.importorskip("zarr")
        lazy = zarr.create_array(store={}, shape=volume.shape, chunks=(1, 32, 32), dtype=volume.dtype)
        lazy[:] = volume
    masks = []
    widget = dock(viewer, checkpoint)
    for data in (volume, lazy):
        image = viewer.add_image(data, name=f"cell {len(masks)}", contrast_limits=(0, 255))
        widget.image_picker.value = image
        viewer.dims.set_point(0, 3)
        middle_click(viewer, image.data_to_world((3, 32, 32)))
        wait_idle(qtbot, widget)
        masks.append(widget.prompts.prediction.mask)
        widget.clear_prompts()
    assert masks[0].any() and np.array_equal(masks[0], masks[1])
