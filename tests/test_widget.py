"""The main widget in a real napari viewer, driven through napari's own mouse machinery."""

from __future__ import annotations

import numpy as np
import pytest
from vispy.util import keys

import rwth_sam
from rwth_sam.core.errors import InputError
from rwth_sam.ui.widget import SamWidget

from conftest import SAM2_TINY_256, random_model
from napari_helpers import (
    SCREENSHOTS,
    dock,
    left_click,
    middle_click,
    middle_drag,
    press_key,
    wait_idle,
)

pytestmark = pytest.mark.gui


def expected_mask(image_data, plane, window, **prompts):
    """The mask from the core API directly, on the same model and slice."""
    segmenter = rwth_sam.Segmenter(random_model(SAM2_TINY_256), image_data, window=window)
    return segmenter.predict(plane, **prompts)


def test_widget_docks_from_the_manifest(viewer, checkpoint):
    viewer.add_image(np.zeros((32, 32), np.uint8), name="img")
    widget = dock(viewer, checkpoint)
    assert widget.image_picker.value.name == "img"
    texts = [text for text, _ in rwth_sam.ui.widget.model_choices()]
    assert any("MobileSAM ViT-T (38.8 MB, download)" == text for text in texts)


def test_click_box_and_submit_on_a_3d_volume(viewer, checkpoint, qtbot, rng):
    volume = rng.integers(0, 4000, (5, 60, 80)).astype(np.int16)
    image = viewer.add_image(
        volume, name="volume", scale=(3.0, 0.5, 0.5), translate=(10, -4, 7), contrast_limits=(500, 3000)
    )
    widget = dock(viewer, checkpoint)
    labels = widget.create_labels_layer()
    viewer.dims.set_point(0, image.data_to_world((2, 0, 0))[0])
    window = rwth_sam.IntensityWindow(500, 3000)
    plane = rwth_sam.SlicePlane.of(volume.shape, 0, 2)

    # middle click: positive point at voxel (2, 30, 40)
    middle_click(viewer, image.data_to_world((2, 30, 40)))
    wait_idle(qtbot, widget)
    assert widget.prompts.labels == [1]
    x, y = widget.prompts.points[0]
    assert abs(x - 40) < 0.05 and abs(y - 30) < 0.05
    first = expected_mask(volume, plane, window, points=[(x, y)], labels=[1])
    np.testing.assert_array_equal(widget.preview_mask(plane), first.mask)
    assert widget._preview_layer.data.shape == (1, 60, 80), "the preview holds one slice, not the volume"
    assert widget._points_layer.data.shape == (1, 3)

    # Ctrl+middle click: negative point, refined from the previous logits
    middle_click(viewer, image.data_to_world((2, 10, 12)), keys.CONTROL)
    wait_idle(qtbot, widget)
    assert widget.prompts.labels == [1, 0]
    second = expected_mask(
        volume, plane, window, points=widget.prompts.points, labels=[1, 0], mask_logits=first.best_logits
    )
    np.testing.assert_array_equal(widget.preview_mask(plane), second.mask)

    # Shift+middle drag: a rectangle is visible while dragging, then becomes the box prompt
    seen_while_dragging = []
    middle_drag(
        viewer, image.data_to_world((2, 5, 6)), image.data_to_world((2, 50, 70)), keys.SHIFT,
        during=lambda: seen_while_dragging.append(len(widget._box_layer.data)),
    )  # fmt: skip
    wait_idle(qtbot, widget)
    assert seen_while_dragging == [1]
    np.testing.assert_allclose(widget.prompts.box, (6, 5, 70, 50), atol=0.05)
    assert widget.prompts.labels == [1, 0]
    preview = widget.preview_mask(plane)
    assert preview.any()
    SCREENSHOTS.mkdir(exist_ok=True)
    viewer.screenshot(SCREENSHOTS / "widget_3d.png", canvas_only=False)

    # submit: the preview lands in the labels layer on slice 2 only, undoable
    widget.label_value.value = 3
    widget.submit()
    assert np.array_equal(labels.data[2] == 3, preview)
    assert not labels.data[[0, 1, 3, 4]].any()
    assert not widget._preview_layer.data.any() and widget.prompts.empty
    labels.undo()
    assert not labels.data.any()


def test_clicks_on_a_transposed_view_slice_another_axis(viewer, checkpoint, qtbot, rng):
    volume = rng.integers(0, 255, (40, 6, 50)).astype(np.uint8)
    image = viewer.add_image(volume, name="volume", scale=(1.0, 2.0, 1.5))
    widget = dock(viewer, checkpoint)
    labels = widget.create_labels_layer()
    viewer.dims.order = (1, 2, 0)  # slice along axis 1; rows are axis 2, columns axis 0
    viewer.dims.set_point(1, image.data_to_world((0, 4, 0))[1])
    middle_click(viewer, image.data_to_world((20, 4, 30)))
    wait_idle(qtbot, widget)
    plane = widget.prompts.plane
    assert (plane.axis, plane.index, plane.row_axis, plane.col_axis) == (1, 4, 2, 0)
    x, y = widget.prompts.points[0]
    assert abs(x - 20) < 0.05 and abs(y - 30) < 0.05
    window = rwth_sam.IntensityWindow(*image.contrast_limits)
    expected = expected_mask(volume, plane, window, points=[(x, y)], labels=[1])
    widget.submit()
    np.testing.assert_array_equal(labels.data[:, 4, :].T == 1, expected.mask)
    assert not labels.data[:, [0, 1, 2, 3, 5], :].any()


def test_submit_keeps_other_labels_unless_overwrite(viewer, checkpoint, qtbot, rng):
    image = viewer.add_image(rng.integers(0, 255, (48, 48)).astype(np.uint8))
    widget = dock(viewer, checkpoint)
    labels = widget.create_labels_layer()
    labels.data[:] = 7
    middle_click(viewer, image.data_to_world((20, 20)))
    wait_idle(qtbot, widget)
    preview = widget.prompts.prediction.mask.copy()
    widget.label_value.value = 2
    widget.submit()
    assert (labels.data == 7).all(), "another label's pixels were overwritten"
    assert "kept" in widget.status.value
    middle_click(viewer, image.data_to_world((20, 20)))
    wait_idle(qtbot, widget)
    widget.overwrite_labels.value = True
    widget.submit()
    assert np.array_equal(labels.data == 2, preview)


# ----------------------------------------------------------------- bad input


def test_labels_of_the_wrong_shape_are_refused(viewer, checkpoint, qtbot, rng):
    image = viewer.add_image(rng.integers(0, 255, (40, 40)).astype(np.uint8))
    widget = dock(viewer, checkpoint)
    wrong = viewer.add_labels(np.zeros((30, 40), np.uint32), name="wrong")
    widget.labels_picker.value = wrong
    middle_click(viewer, image.data_to_world((20, 20)))
    wait_idle(qtbot, widget)
    widget.submit()
    assert "has shape (30, 40) but the image has (40, 40)" in widget.status.value
    assert not wrong.data.any()


def test_a_4d_image_is_refused(viewer, checkpoint, qtbot):
    image = viewer.add_image(np.zeros((2, 3, 20, 20), np.uint8), name="4d")
    widget = dock(viewer, checkpoint)
    middle_click(viewer, image.data_to_world((0, 0, 10, 10)))
    wait_idle(qtbot, widget)
    assert "4 spatial dimensions" in widget.status.value
    assert widget.prompts.empty and widget._preview_layer is None


def test_an_all_nan_slice_is_refused(viewer, checkpoint, qtbot):
    volume = np.random.default_rng(1).random((3, 24, 24)).astype(np.float32)
    volume[1] = np.nan
    image = viewer.add_image(volume, contrast_limits=(0, 1))
    widget = dock(viewer, checkpoint)
    viewer.dims.set_point(0, 1)
    middle_click(viewer, image.data_to_world((1, 12, 12)))
    wait_idle(qtbot, widget)
    assert "only NaN" in widget.status.value
    assert widget.prompts.prediction is None
    assert not widget.preview_mask(rwth_sam.SlicePlane.of(volume.shape, 0, 1)).any()


def test_a_click_outside_the_image_is_refused(viewer, checkpoint, qtbot):
    image = viewer.add_image(np.zeros((20, 20), np.uint8))
    widget = dock(viewer, checkpoint)
    viewer.scene.camera.zoom = viewer.scene.camera.zoom / 3  # make room around the image
    middle_click(viewer, image.data_to_world((10, 45)))
    wait_idle(qtbot, widget)
    assert "outside the image" in widget.status.value
    assert widget.prompts.empty


def test_sample_battery_opens_and_segments(viewer, checkpoint, qtbot):
    """The README's main job: sample volume open, widget docked, a click segments, submit lands."""
    viewer.open_sample("rwth-sam", "battery_volume")
    image, truth = viewer.layers["battery phantom"], viewer.layers["battery phantom truth"]
    assert image.data.shape == truth.data.shape == (32, 256, 256)
    assert set(np.unique(truth.data)) == set(range(7))
    widget = dock(viewer, checkpoint)
    assert widget.image_picker.value is image
    labels = viewer.layers["battery phantom labels"]
    assert widget.labels_picker.value is labels, "the sample's empty labels are the target, never its truth"
    assert not labels.data.any()
    viewer.dims.set_point(0, 16)
    middle_click(viewer, image.data_to_world((16, 128, 60)))
    wait_idle(qtbot, widget)
    assert widget.prompts.prediction is not None
    SCREENSHOTS.mkdir(exist_ok=True)
    viewer.screenshot(SCREENSHOTS / "sample_battery.png", canvas_only=False)
    widget.submit()
    submitted = int((labels.data[16] == 1).sum())
    assert submitted > 0 and f"Submitted {submitted} pixels" in widget.status.value
    assert not np.delete(labels.data, 16, axis=0).any()
    assert set(np.unique(truth.data)) == set(range(7)), "the truth labels are untouched"


def test_reference_labels_are_never_the_default_target(viewer, checkpoint):
    """Docked before the sample opens, or after; with more labels layers added: the truth is the
    default target only when picked by the user."""
    widget = dock(viewer, checkpoint)
    viewer.open_sample("rwth-sam", "battery_volume")
    truth, labels = viewer.layers["battery phantom truth"], viewer.layers["battery phantom labels"]
    assert widget.labels_picker.value is labels
    assert [name for name, _ in widget._labels_choices()] == [
        "battery phantom labels", "battery phantom truth (reference)"
    ]  # fmt: skip
    viewer.layers.remove(labels)
    assert widget.labels_picker.value is truth, "the only labels layer left: picked, as the user sees it named"
    added = viewer.add_labels(np.zeros(truth.data.shape, np.uint32), name="mine")
    assert widget.labels_picker.value is added
    combo = widget.labels_picker.native
    index = combo.findText("battery phantom truth (reference)")
    combo.setCurrentIndex(index)
    combo.activated.emit(index)  # what a user's pick in the list sends
    assert widget.labels_picker.value is truth
    viewer.add_labels(np.zeros((4, 4), np.uint32), name="other")
    assert widget.labels_picker.value is truth, "the user's own pick stays"


def test_layer_pickers_follow_the_layer_list(viewer, checkpoint):
    viewer.add_image(np.zeros((16, 16), np.uint8), name="first")
    widget = dock(viewer, checkpoint)
    viewer.add_image(np.zeros((16, 16), np.uint8), name="second")
    viewer.add_labels(np.zeros((16, 16), np.uint8), name="seg")
    assert [layer.name for layer in widget.image_picker.choices] == ["first", "second"]
    assert [layer.name for layer in widget.labels_picker.choices] == ["seg"], "the widget's preview is no target"
    viewer.layers.remove("first")
    assert [layer.name for layer in widget.image_picker.choices] == ["second"]


def test_prompts_made_while_busy_coalesce_and_stale_results_are_dropped(viewer, checkpoint, qtbot, rng):
    volume = rng.integers(0, 255, (48, 64)).astype(np.uint8)
    image = viewer.add_image(volume)
    widget = dock(viewer, checkpoint)
    gate, shown = __import__("threading").Event(), []
    load = widget.segmenter_for

    def slow_first_segmenter(request):
        gate.wait(20)
        return load(request)

    widget.segmenter_for = slow_first_segmenter
    show = widget.show_preview
    widget.show_preview = lambda plane, mask: (shown.append(mask is not None), show(plane, mask))
    for col in (10, 20, 30):  # three clicks while the model is still loading
        middle_click(viewer, image.data_to_world((24, col)))
    gate.set()
    wait_idle(qtbot, widget)
    assert shown.count(True) == 1, "a stale preview was shown"
    expected = expected_mask(
        volume, rwth_sam.SlicePlane.of(volume.shape), None, points=widget.prompts.points, labels=[1, 1, 1]
    )
    np.testing.assert_array_equal(widget._preview_layer.data == 1, expected.mask)


def test_select_and_delete_prompt_points_with_keys(viewer, checkpoint, qtbot, rng):
    volume = rng.integers(0, 255, (48, 64)).astype(np.uint8)
    image = viewer.add_image(volume)
    widget = dock(viewer, checkpoint)
    for row, col, modifiers in ((10, 10, ()), (20, 30, (keys.CONTROL,)), (30, 50, ())):
        middle_click(viewer, image.data_to_world((row, col)), *modifiers)
        wait_idle(qtbot, widget)
    assert widget.prompts.labels == [1, 0, 1]

    left_click(viewer, image.data_to_world((20.4, 30.3)))  # selects the negative point
    assert widget.prompts.selected == {1}
    assert list(widget._points_layer.border_color[1][:3]) == [1, 1, 0]
    press_key(viewer, "Ctrl+K")
    wait_idle(qtbot, widget)
    assert widget.prompts.labels == [1, 1] and widget.prompts.selected == set()
    expected = expected_mask(
        volume, rwth_sam.SlicePlane.of(volume.shape), None, points=widget.prompts.points, labels=[1, 1]
    )
    np.testing.assert_array_equal(widget._preview_layer.data == 1, expected.mask)

    press_key(viewer, "Ctrl+Shift+K")
    assert widget.prompts.empty and not widget._preview_layer.data.any()
    assert len(widget._points_layer.data) == 0


def test_submit_and_undo_redo_keys_and_brush_edits_survive(viewer, checkpoint, qtbot, rng):
    image = viewer.add_image(rng.integers(0, 255, (48, 64)).astype(np.uint8))
    widget = dock(viewer, checkpoint)
    labels = widget.create_labels_layer()
    labels.paint((5, 5), 9)  # the user's own brush stroke (napari's brush, its own undo history)
    brushed = labels.data == 9
    viewer.layers.selection.active = image
    middle_click(viewer, image.data_to_world((30, 40)))
    wait_idle(qtbot, widget)
    preview = widget.prompts.prediction.mask.copy()
    press_key(viewer, "Ctrl+Enter")
    assert np.array_equal(labels.data == 1, preview & ~brushed)
    assert (labels.data[brushed] == 9).all(), "the brush stroke was overwritten"
    press_key(viewer, "Ctrl+Z")
    assert not (labels.data == 1).any() and (labels.data[brushed] == 9).all()
    press_key(viewer, "Ctrl+Shift+Z")
    assert np.array_equal(labels.data == 1, preview & ~brushed)


def test_contrast_change_resegments_with_the_new_window(viewer, checkpoint, qtbot, rng):
    volume = rng.integers(0, 4000, (48, 64)).astype(np.uint16)
    image = viewer.add_image(volume, contrast_limits=(0, 4000))
    widget = dock(viewer, checkpoint)
    middle_click(viewer, image.data_to_world((24, 30)))
    wait_idle(qtbot, widget)
    plane = rwth_sam.SlicePlane.of(volume.shape)
    points = widget.prompts.points
    for limits in [(100, 3000), (200, 2500), (1000, 2000)]:  # a slider drag: one re-segmentation at the end
        image.contrast_limits = limits
    qtbot.waitUntil(lambda: widget.prompts.identity.window[1] == (1000, 2000), timeout=5_000)
    wait_idle(qtbot, widget)
    expected = expected_mask(volume, plane, rwth_sam.IntensityWindow(1000, 2000), points=points, labels=[1])
    np.testing.assert_array_equal(widget._preview_layer.data == 1, expected.mask)
    # embeddings of the first and the final window only: none for the slider's intermediate positions
    assert len(widget.workspace._segmenter.cache) == 2


def test_submit_to_a_profile_class_and_in_instance_mode(viewer, checkpoint, qtbot, rng):
    from rwth_sam.core.labels.profile_store import PROFILES

    image = viewer.add_image(rng.integers(0, 255, (48, 64)).astype(np.uint8))
    widget = dock(viewer, checkpoint)
    labels = widget.create_labels_layer()
    profile = PROFILES.get("Li-ion cylindrical cell")
    anode, cathode = profile.class_by_name("anode"), profile.class_by_name("cathode")
    widget.profile.value = profile.name
    assert list(widget.classes.choices) == list(profile.classes)
    widget.classes.value = anode
    assert widget.label_value.value == anode.value

    middle_click(viewer, image.data_to_world((24, 10)))
    wait_idle(qtbot, widget)
    first = widget.prompts.prediction.mask.copy()
    widget.submit()
    assert np.array_equal(labels.data == anode.value, first)
    np.testing.assert_allclose(
        labels.colormap.map(anode.value)[:3], np.array(tuple(int(anode.color[i : i + 2], 16) for i in (1, 3, 5))) / 255
    )
    assert "anode" in list(labels.features["class"])

    # instance mode: each object a new id, its class in the features table
    labels.data[:] = 0
    widget.instance_mode.value = True
    for cls, col in ((cathode, 10), (cathode, 50)):
        widget.classes.value = cls
        middle_click(viewer, image.data_to_world((24, col)))
        wait_idle(qtbot, widget)
        widget.overwrite_labels.value = True
        widget.submit()
    assert set(np.unique(labels.data)) <= {0, 1, 2} and (labels.data == 2).any()
    table = labels.features.set_index("index")["class"]
    assert table[1] == "cathode" and table[2] == "cathode"


def test_moving_through_slices_embeds_the_shown_slice_first_then_neighbours(viewer, checkpoint, qtbot, rng):
    volume = rng.integers(0, 255, (8, 40, 40)).astype(np.uint8)
    image = viewer.add_image(volume)
    widget = dock(viewer, checkpoint)
    viewer.dims.set_point(0, 3)
    middle_click(viewer, image.data_to_world((3, 20, 20)))  # loads the model
    wait_idle(qtbot, widget)
    embedded = []
    predictor = widget.workspace.loaded
    encode = predictor._embed
    predictor._embed = lambda rgb: (
        embedded.append(next(i for i in range(8) if np.array_equal(rgb[..., 0], volume[i]))),
        encode(rgb),
    )[1]
    viewer.dims.set_point(0, 6)
    wait_idle(qtbot, widget)
    assert embedded[0] == 6, "the shown slice must be embedded first"
    assert embedded[1:] == [7, 5, 4], "then its neighbours, nearest first (slice 3 was cached)"


def test_embeddings_kept_on_disk_serve_a_later_session(viewer, checkpoint, qtbot, monkeypatch, tmp_path, rng):
    monkeypatch.setattr("rwth_sam.ui.widget.default_disk_cache_dir", lambda: tmp_path / "embeddings")
    volume = rng.integers(0, 255, (48, 64)).astype(np.uint8)
    image = viewer.add_image(volume)
    widget = dock(viewer, checkpoint)
    widget.keep_on_disk.value = True
    middle_click(viewer, image.data_to_world((24, 30)))
    wait_idle(qtbot, widget)
    first = widget.prompts.prediction.mask.copy()
    assert any((tmp_path / "embeddings").iterdir()), "nothing was written to disk"

    widget.model.value = rwth_sam.model_specs()[0].name  # a model switch: a fresh model, an empty memory cache
    widget.model.value = SAM2_TINY_256
    predictor = widget.workspace.predictor(SAM2_TINY_256, checkpoint, "cpu")  # what the next click loads
    assert len(widget.workspace.cache) == 0
    encoder_runs = []
    monkeypatch.setattr(predictor, "_embed", lambda rgb: encoder_runs.append(1))
    middle_click(viewer, image.data_to_world((24, 30)))
    wait_idle(qtbot, widget)
    assert encoder_runs == [] and np.array_equal(widget.prompts.prediction.mask, first)


def test_model_and_checkpoint_from_the_environment(viewer, checkpoint, monkeypatch):
    """$RWTH_SAM_MODEL and $RWTH_SAM_CHECKPOINT: offline with one's own checkpoint, plain napari too."""
    viewer.add_image(np.zeros((32, 32), np.uint8))
    monkeypatch.setenv("RWTH_SAM_MODEL", SAM2_TINY_256)
    monkeypatch.setenv("RWTH_SAM_CHECKPOINT", str(checkpoint))
    _, widget = viewer.window.add_plugin_dock_widget("rwth-sam", "Segment Anything (SAM)")
    assert widget.model.value == SAM2_TINY_256 and str(widget.checkpoint.value) == str(checkpoint)
    monkeypatch.setenv("RWTH_SAM_MODEL", "no_such_model")
    monkeypatch.setenv("RWTH_SAM_CHECKPOINT", str(checkpoint) + ".missing")
    other = SamWidget(viewer)
    assert "names no file" in other.status.value and other.model.value != "no_such_model"
    other.native.close()


def test_save_labels_offers_the_source_folder_and_format_and_writes_onto_the_source_grid(
    viewer, checkpoint, tmp_path, monkeypatch, qtbot
):
    nibabel = pytest.importorskip("nibabel")
    from rwth_sam.ui import widget as widget_module

    affine = np.array([[0.0, -0.8, 0.0, 10.0], [0.7, 0.0, 0.0, -20.0], [0.0, 0.0, 2.5, 5.0], [0, 0, 0, 1]])
    source = np.zeros((9, 7, 5), np.int16)  # (i, j, k), axes permuted against the world's
    path = tmp_path / "scan.nii.gz"
    nibabel.save(nibabel.Nifti1Image(source, affine), path)
    [image] = viewer.open(path, plugin="rwth-sam")
    widget = dock(viewer, checkpoint)
    widget.image_picker.value = image
    labels = widget.create_labels_layer()
    region = np.zeros(source.shape, bool)
    region[2:4, 1:6, 3] = True  # in the source's own voxels
    shown = image.metadata["rwth_sam_source"]
    order, flips = shown["display_axes"], shown["display_flips"]
    shown_region = region.transpose(2, 1, 0).transpose(order)[
        tuple(slice(None, None, -1) if f else slice(None) for f in flips)
    ]
    labels.data_setitem(np.nonzero(shown_region), 4)
    offered = []

    def answer(parent, caption, directory, filters):
        offered.append((directory, filters))
        return str(tmp_path / "saved.nii.gz"), filters.split(";;")[0]

    monkeypatch.setattr(widget_module.QFileDialog, "getSaveFileName", answer)
    widget.save_labels.changed.emit(True)
    wait_idle(qtbot, widget)  # saved in a worker

    assert offered[0][0] == str(tmp_path / "scan_labels.nii.gz"), "offer the source's folder and format"
    saved = nibabel.load(tmp_path / "saved.nii.gz")
    np.testing.assert_allclose(saved.affine, affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(saved.dataobj) == 4, region)
    assert widget.status.value == "Saved 'scan labels' to saved.nii.gz."


def test_a_lazy_hdf5_volume_is_segmented_like_the_same_array_and_saved_as_tiff(
    viewer, checkpoint, qtbot, rng, tmp_path
):
    h5py = pytest.importorskip("h5py")
    tifffile = pytest.importorskip("tifffile")
    volume = rng.integers(0, 4000, (6, 48, 64)).astype(np.uint16)
    path = tmp_path / "scan.h5"
    with h5py.File(path, "w") as handle:
        handle["exchange/data"] = volume
        handle["exchange/theta"] = np.linspace(0, 180, 6)  # 1D: not an image
    [image] = viewer.open(path, plugin="rwth-sam")
    assert image.data.__class__.__module__.startswith("dask"), "the dataset is read lazily"
    image.contrast_limits = (500, 3000)
    widget = dock(viewer, checkpoint)
    labels = widget.create_labels_layer()
    viewer.dims.set_point(0, 3)
    middle_click(viewer, image.data_to_world((3, 20, 30)))
    wait_idle(qtbot, widget)
    plane = rwth_sam.SlicePlane.of(volume.shape, 0, 3)
    expected = expected_mask(volume, plane, rwth_sam.IntensityWindow(500, 3000), points=[(30, 20)], labels=[1])
    np.testing.assert_array_equal(widget.preview_mask(plane), expected.mask)
    widget.submit()
    widget.save_labels_as(tmp_path / "scan_labels.tif")
    assert not labels.editable, "locked while it is saved, in a worker"
    wait_idle(qtbot, widget)
    assert widget.status.value == f"Saved '{labels.name}' to scan_labels.tif.", "no class table without named classes"
    assert labels.editable
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "scan_labels.tif") != 0, np.asarray(labels.data) != 0)
    assert (np.asarray(labels.data)[3] != 0).sum() == expected.mask.sum()


@pytest.mark.parametrize(
    "shape, axis",
    [((90, 300, 340), 0), ((300, 80, 340), 1), ((300, 340, 70), 2), ((2, 2048, 2048), 0)],
    ids=["axis 0", "axis 1", "axis 2", "a 2048² slice"],
)
def test_a_click_in_a_zoomed_view_segments_the_visible_region_at_native_resolution(
    viewer, checkpoint, qtbot, rng, shape, axis
):
    from rwth_sam.ui.widget import VISIBLE_REGION

    from conftest import upstream_predict, upstream_predictor

    volume = rng.integers(0, 255, shape, dtype=np.uint8)
    image = viewer.add_image(volume, name="large", contrast_limits=(0, 255))
    widget = dock(viewer, checkpoint)
    labels = widget.create_labels_layer()
    widget.model_sees.value = VISIBLE_REGION
    viewer.dims.order = (axis, *[a for a in range(3) if a != axis])
    index = shape[axis] // 2
    viewer.dims.set_point(axis, index)
    row_axis, col_axis = [a for a in range(3) if a != axis]
    target = np.array([index, 0, 0], float)
    target[[row_axis, col_axis]] = shape[row_axis] * 0.4, shape[col_axis] * 0.6
    viewer.scene.camera.center = tuple(target[list(viewer.dims.order)][1:])
    viewer.scene.camera.zoom = 8 * viewer.scene.camera.zoom
    qtbot.wait(200)  # drawn: napari has updated the layer's corner pixels
    first, last = np.asarray(image.corner_pixels)
    row0, row1 = int(first[row_axis]), int(last[row_axis]) + 1
    col0, col1 = int(first[col_axis]), int(last[col_axis]) + 1
    assert 0 < row1 - row0 < shape[row_axis] / 2 and 0 < col1 - col0 < shape[col_axis] / 2, "zoomed in"

    clicked = target.round()
    middle_click(viewer, image.data_to_world(clicked))
    wait_idle(qtbot, widget)
    crop_index = [slice(None)] * 3
    crop_index[axis], crop_index[row_axis], crop_index[col_axis] = index, slice(row0, row1), slice(col0, col1)
    crop = volume[tuple(crop_index)]
    if row_axis > col_axis:
        crop = crop.T
    rgb = np.repeat(crop[..., None], 3, axis=-1)
    upstream = upstream_predictor(random_model(SAM2_TINY_256))
    upstream.set_image(rgb)
    [(x, y)] = widget.prompts.points  # the click's (x, y) on the region, through napari's canvas transform
    assert abs(x - (clicked[col_axis] - col0)) < 0.05 and abs(y - (clicked[row_axis] - row0)) < 0.05
    masks, scores, _ = upstream_predict(
        upstream, point_coords=np.array([[x, y]]), point_labels=np.array([1]), multimask_output=True
    )
    expected = masks[int(np.argmax(scores))]
    plane = widget.prompts.plane
    assert plane.region == (row0, row1, col0, col1), "the region is the part of the slice in view"
    np.testing.assert_array_equal(widget.preview_mask(plane), expected)
    assert "Model sees" in widget.resolution.value and f"{col1 - col0}×{row1 - row0} px" in widget.resolution.value

    widget.submit()
    written = np.zeros(shape, bool)
    region_block = [slice(None)] * 3
    region_block[axis], region_block[row_axis], region_block[col_axis] = index, slice(row0, row1), slice(col0, col1)
    written[tuple(region_block)] = expected.T if row_axis > col_axis else expected
    np.testing.assert_array_equal(np.asarray(labels.data) != 0, written, "written back at the region's offset")


def test_a_box_segments_a_region_around_it_at_native_resolution(viewer, checkpoint, qtbot, rng):
    from rwth_sam.ui.widget import BOX_REGION, BOX_REGION_MIN

    from conftest import upstream_predict, upstream_predictor

    volume = rng.integers(0, 255, (3, 600, 700), dtype=np.uint8)
    image = viewer.add_image(volume, name="large", contrast_limits=(0, 255))
    widget = dock(viewer, checkpoint)
    widget.create_labels_layer()
    widget.model_sees.value = BOX_REGION
    viewer.dims.set_point(0, 1)
    middle_drag(viewer, image.data_to_world((1, 300, 400)), image.data_to_world((1, 330, 440)), keys.SHIFT)
    wait_idle(qtbot, widget)
    plane = widget.prompts.plane
    row0, row1, col0, col1 = plane.region
    assert (row1 - row0, col1 - col0) == (BOX_REGION_MIN, BOX_REGION_MIN), "a square of the least side"
    assert abs((row0 + row1) / 2 - 315) <= 1 and abs((col0 + col1) / 2 - 420) <= 1, "centred on the box"
    upstream = upstream_predictor(random_model(SAM2_TINY_256))
    upstream.set_image(np.repeat(volume[1, row0:row1, col0:col1, None], 3, axis=-1))
    box = np.array(widget.prompts.box)
    np.testing.assert_allclose(box, (400 - col0, 300 - row0, 440 - col0, 330 - row0), atol=0.05)
    masks, _, _ = upstream_predict(upstream, box=box, multimask_output=False)
    np.testing.assert_array_equal(widget.preview_mask(plane), masks[0])


def test_messages_that_matter_are_kept_on_top_until_dismissed(viewer, checkpoint):
    widget = dock(viewer, checkpoint)
    messages = widget.messages
    widget.report_error(InputError("Slice 3 is outside the range."))
    widget.keep("Propagation done: 13 slices (100 voxels).")
    assert messages.kept == ["Propagation done: 13 slices (100 voxels).", "Slice 3 is outside the range."]
    assert widget.status.native.isHidden(), "said and kept: shown once, in the kept row"
    widget.say("Preview: 120 pixels, score 0.91")
    assert not widget.status.native.isHidden() and messages.kept[1] == "Slice 3 is outside the range."
    assert not messages.dismiss_all.native.isHidden()
    widget.keep("Slice 3 is outside the range.")
    assert messages.kept == ["Slice 3 is outside the range.", "Propagation done: 13 slices (100 voxels)."]
    messages.rows[1][1].clicked.emit()  # its ×
    assert messages.kept == ["Slice 3 is outside the range."] and messages.dismiss_all.native.isHidden()
    widget.keep("Saved 'labels' to labels.tif.")
    messages.dismiss_all.clicked.emit()
    assert messages.kept == []
