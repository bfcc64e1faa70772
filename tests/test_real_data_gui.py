"""The annotator on a real battery CT slice (../shared/data): classes, submit, automatic mode, undo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rwth_sam.core.labels.profile_store import PROFILES
from rwth_sam.ui.widget import AUTOMATIC_MODE

from conftest import PERMISSIVE
from napari_helpers import SCREENSHOTS, dock, middle_click, wait_idle

pytestmark = pytest.mark.gui


def test_battery_slice_click_class_submit_and_automatic(viewer, checkpoint, qtbot, shared_data: Path):
    tifffile = pytest.importorskip("tifffile")
    folder = shared_data / "battery_xct_cylindrical_cell_ucl"
    image_data = tifffile.imread(folder / "im_1.tif")
    electrodes = tifffile.imread(folder / "mask_1.tif") > 0
    original = image_data.copy()
    viewer.window.resize(1500, 950)
    image = viewer.add_image(image_data, name="im_1")
    widget = dock(viewer, checkpoint)
    labels = widget.create_labels_layer()
    profile = PROFILES.get("Li-ion cylindrical cell")
    widget.profile.value = profile.name
    cathode = profile.class_by_name("cathode")
    widget.classes.value = cathode

    row, col = np.argwhere(electrodes)[len(np.argwhere(electrodes)) // 2]
    middle_click(viewer, image.data_to_world((row, col)))
    wait_idle(qtbot, widget)
    preview = widget.prompts.prediction.mask.copy()
    assert preview.shape == image_data.shape
    SCREENSHOTS.mkdir(exist_ok=True)
    viewer.screenshot(SCREENSHOTS / "battery_slice_click.png", canvas_only=False)
    widget.submit()
    assert np.array_equal(labels.data == cathode.value, preview)
    assert "cathode" in list(labels.features["class"])

    widget.mode.value = AUTOMATIC_MODE
    for name, value in PERMISSIVE.items():
        widget.automatic.setting_controls[name].value = value
    widget.automatic.segment_slice()
    wait_idle(qtbot, widget, timeout=120_000)
    objects = widget.automatic.result_layer.data
    assert objects.max() >= 1
    viewer.screenshot(SCREENSHOTS / "battery_slice_automatic.png", canvas_only=False)
    labels.undo()
    assert not labels.data.any()
    assert np.array_equal(image_data, original)
