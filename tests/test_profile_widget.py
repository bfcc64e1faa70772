"""Profiles in napari: the reader, the session's profile store, the profile widget and apply_profile."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from napari.utils.notifications import NotificationSeverity, notification_manager
from qtpy.QtCore import Qt

from rwth_sam.core.phantom import CLASS_NAMES, battery_phantom
from rwth_sam.core.profiles import Profile, SegmentationClass
from rwth_sam.ui import reader
from rwth_sam.ui.profile_store import PROFILES, ProfileStore
from rwth_sam.ui.profile_widget import DESCRIPTION, NAME, UNKNOWN_LABEL_COLOR, VALUE, ProfileWidget, apply_profile

pytestmark = pytest.mark.gui

SCREENSHOTS = Path(__file__).resolve().parents[1] / "screenshots"
EXAMPLES = ["Abdominal CT", "Li-ion cylindrical cell"]


@pytest.fixture(autouse=True)
def fresh_store():
    PROFILES.reset()
    yield
    PROFILES.reset()


@pytest.fixture
def widget(viewer):
    """A profile widget docked in the viewer (so it is destroyed, and disconnected, with it)."""
    widget = ProfileWidget(viewer)
    viewer.window.add_dock_widget(widget, name="profiles")
    return widget


@pytest.fixture
def notifications():
    seen = []
    notification_manager.notification_ready.connect(seen.append)
    yield seen
    notification_manager.notification_ready.disconnect(seen.append)


def messages(notifications, severity):
    return [str(note.message) for note in notifications if note.severity == severity]


def cell_profile() -> Profile:
    return Profile(
        "My cell",
        (SegmentationClass("casing", 1, "#9e9e9e"), SegmentationClass("anode", 3, "#1f77b4", "graphite")),
        "for the tests",
    )


# ----------------------------------------------------------------- store


def test_store_starts_with_the_examples_and_signals_changes():
    assert PROFILES.names == EXAMPLES
    store, events = ProfileStore(), []
    store.changed.connect(lambda: events.append(store.names))
    store.add(cell_profile())
    store.add(Profile("other"))
    store.add(Profile("My cell", description="replaced"))  # same name: replaced in place
    assert store.names == ["My cell", "other"] and store.get("My cell").description == "replaced"
    store.replace("My cell", Profile("renamed"))
    store.remove("other")
    assert events == [["My cell"], ["My cell", "other"], ["My cell", "other"], ["renamed", "other"], ["renamed"]]
    assert store.get("other") is None and store.unique_name("renamed") == "renamed 2"
    with pytest.raises(KeyError):
        store.remove("other")


# ----------------------------------------------------------------- reader


def test_opening_a_profile_adds_it_and_no_layer(viewer, tmp_path, notifications):
    path = cell_profile().save(tmp_path / "cell.json")
    assert reader.get_reader(str(path)) is reader.read_profiles
    added = viewer.open(path, plugin="rwth-sam")
    assert added == [] and len(viewer.layers) == 0
    assert PROFILES.get("My cell") == cell_profile()
    assert any("Profile 'My cell' (2 classes) from cell.json" in text for text in messages(notifications, NotificationSeverity.INFO))
    # without naming the plugin (as drag and drop does): rwth-sam is the only reader for it
    PROFILES.remove("My cell")
    assert viewer.open(str(path), plugin=None) == [] and "My cell" in PROFILES


def test_reader_leaves_other_json_files_alone(viewer, tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "coco", "images": []}))
    assert reader.get_reader(str(other)) is None
    assert reader.get_reader(str(tmp_path / "image.tif")) is None
    with pytest.raises(ValueError, match="refused the file"):
        viewer.open(other, plugin="rwth-sam")
    assert PROFILES.names == EXAMPLES


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"format": "rwth-sam-profile", "version": 1, "name": "x",, "classes": []}', "not valid JSON: Expecting property name enclosed in double quotes at line 1, column 58"),
        ('{"format": "rwth-sam-profile", "version": 7, "name": "x"}', "version: profile format version 7 is not supported; this rwth-sam reads version 1"),
        ('{"format": "rwth-sam-profile", "version": 1, "name": "x", "classes": [{"name": "a", "value": 0, "color": "#000000"}]}', "classes[0].value: must be from 1"),
    ],
)
def test_a_broken_profile_is_reported_and_nothing_is_added(viewer, tmp_path, notifications, text, expected):
    path = tmp_path / "broken.json"
    path.write_text(text)
    assert viewer.open(path, plugin="rwth-sam") == []
    errors = messages(notifications, NotificationSeverity.ERROR)
    assert len(errors) == 1 and errors[0].startswith(f"Cannot load profile {path}: ") and expected in errors[0], errors
    assert PROFILES.names == EXAMPLES and len(viewer.layers) == 0


# ----------------------------------------------------------------- widget


def test_widget_docks_from_the_manifest(viewer):
    _, widget = viewer.window.add_plugin_dock_widget("rwth-sam", "Segmentation profiles")
    assert isinstance(widget, ProfileWidget)
    assert [widget.profile_combo.itemText(i) for i in range(widget.profile_combo.count())] == EXAMPLES
    assert widget.profile.name == EXAMPLES[0] and widget.table.rowCount() == len(PROFILES.get(EXAMPLES[0]).classes)
    widget.profile_combo.setCurrentIndex(1)
    assert widget.profile.name == "Li-ion cylindrical cell"
    assert [widget.table.item(row, NAME).text() for row in range(3)] == ["casing", "cathode", "anode"]
    assert widget.table.cellWidget(0, 2).text() == "#9e9e9e"


def test_edit_classes_save_and_reload(widget, tmp_path):
    widget.new_profile()
    assert widget.profile == Profile("New profile") and "New profile" in PROFILES
    widget.name_edit.setText("Electrodes")
    widget.name_edit.editingFinished.emit()  # rename through the name field
    assert widget.profile.name == "Electrodes" and "New profile" not in PROFILES

    widget.add_class("cathode", color="#D62728")  # value: the next free one
    widget.add_class()  # all defaults
    widget.add_class("separator", 4, "#ffdd57", "polymer film")
    assert [(c.name, c.value, c.color) for c in widget.profile.classes] == [
        ("cathode", 1, "#d62728"), ("class 2", 2, "#1f77b4"), ("separator", 4, "#ffdd57"),
    ]  # fmt: skip

    # edit through the table cells, as a user's typing does
    widget.table.item(1, NAME).setText("anode")
    widget.table.item(1, VALUE).setData(Qt.EditRole, 3)
    widget.table.item(1, DESCRIPTION).setText("graphite")
    widget.set_color(1, "#0000ff")
    assert widget.profile.classes[1] == SegmentationClass("anode", 3, "#0000ff", "graphite")
    assert widget.table.cellWidget(1, 2).text() == "#0000ff"

    # reorder with the buttons: the selection follows the moved class
    widget.table.setCurrentCell(2, NAME)
    widget.up_button.click()
    assert [c.name for c in widget.profile.classes] == ["cathode", "separator", "anode"]
    assert widget.table.currentRow() == 1
    widget.up_button.click()
    assert [c.name for c in widget.profile.classes] == ["separator", "cathode", "anode"]
    assert not widget.up_button.isEnabled() and widget.down_button.isEnabled()
    widget.down_button.click()
    assert [c.name for c in widget.profile.classes] == ["cathode", "separator", "anode"]

    # delete, then add: the deleted class's value is not reused while a larger one is in use
    widget.table.setCurrentCell(0, NAME)
    widget.remove_class_button.click()
    assert [c.name for c in widget.profile.classes] == ["separator", "anode"]
    widget.add_class("pore")
    assert widget.profile.class_by_name("pore").value == 5

    widget.description_edit.setText("two electrodes")
    widget.description_edit.editingFinished.emit()
    path = widget.save_to(tmp_path / "electrodes.json")
    assert path.is_file() and "Saved 'Electrodes'" in widget.status.text()
    saved = widget.profile
    widget.close_profile()
    assert "Electrodes" not in PROFILES
    assert widget.open_from(path) == saved == PROFILES.get("Electrodes") == Profile.load(path)
    assert widget.profile is PROFILES.get("Electrodes") and widget.table.rowCount() == 3


def test_invalid_edits_are_refused_with_a_message(widget, notifications):
    PROFILES.add(cell_profile())
    widget.select_profile("My cell")
    widget.table.item(1, NAME).setText("Casing")
    assert "Row 2, name: 'Casing' is already the name of row 1; class names must be unique" == widget.status.text()
    assert widget.table.item(1, NAME).text() == "anode" and PROFILES.get("My cell") == cell_profile()
    widget.table.item(1, VALUE).setData(Qt.EditRole, 1)
    assert widget.status.text().startswith("Row 2, label value: 1 is already the label value of row 1 ('casing')")
    assert widget.table.item(1, VALUE).data(Qt.EditRole) == 3
    widget.set_color(0, "red")
    assert widget.status.text().startswith("Row 1, colour: 'red' is not a colour of the form #rrggbb")
    widget.rename_profile(" ")
    assert widget.status.text() == "Profile name: must not be empty" and widget.name_edit.text() == "My cell"
    widget.rename_profile("Abdominal CT")
    assert widget.status.text() == "There is already a profile named 'Abdominal CT'." and widget.profile.name == "My cell"
    assert PROFILES.get("My cell") == cell_profile() and len(messages(notifications, NotificationSeverity.ERROR)) == 5


def test_widget_follows_the_store(widget, viewer, tmp_path):
    path = cell_profile().save(tmp_path / "cell.json")
    viewer.open(path, plugin="rwth-sam")  # another way in: the reader
    assert widget.profile_combo.count() == 3 and widget.profile_combo.itemText(2) == "My cell"
    widget.select_profile("My cell")
    PROFILES.add(Profile("My cell", (SegmentationClass("only", 9, "#123456"),)))
    assert widget.table.rowCount() == 1 and widget.table.item(0, NAME).text() == "only"
    PROFILES.remove("My cell")
    assert widget.profile.name in EXAMPLES


def test_apply_profile_colours_and_names_labels(viewer):
    image, truth = battery_phantom(shape=(2, 64, 64))
    labels = viewer.add_labels(truth.copy(), name="cell labels")
    labels.data[0, 0, 0] = 42  # a value the profile does not know
    profile = PROFILES.get("Li-ion cylindrical cell")
    apply_profile(profile, labels)
    for item in profile.classes:
        np.testing.assert_allclose(labels.colormap.map(item.value)[:3], _rgb(item.color), atol=1e-6)
    assert labels.colormap.map(0)[3] == 0  # background transparent
    np.testing.assert_allclose(labels.colormap.map(42)[:3], _rgb(UNKNOWN_LABEL_COLOR), atol=1e-6)
    assert list(labels.features["class"]) == ["background", *[item.name for item in profile.classes]]
    assert list(labels.features["index"]) == [0, *[item.value for item in profile.classes]]

    # hovering a labelled pixel: napari's status bar names its class
    anode = tuple(np.argwhere(truth[1] == 3)[0])
    position = (1, *anode)
    assert "class: anode" in labels.get_status(position, world=True)["coordinates"]
    viewer.dims.set_point(0, 1)
    viewer.layers.selection.active = labels
    viewer.mouse_over_canvas = True
    viewer.cursor.position = position
    viewer.update_status_from_cursor()
    assert "class: anode" in str(viewer.status)
    for value, name in CLASS_NAMES.items():
        assert f"class: {name}" in labels.get_status((1, *np.argwhere(truth[1] == value)[0]), world=True)["coordinates"]


def test_widget_applies_to_the_picked_labels_layer(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    dock, widget = viewer.window.add_plugin_dock_widget("rwth-sam", "Segmentation profiles")
    assert not widget.apply_button.isEnabled() and widget.layer_combo.count() == 0
    image, truth = battery_phantom(shape=(1, 128, 128))
    viewer.add_image(image[0], name="cell")
    first = viewer.add_labels(np.zeros((128, 128), np.uint8), name="first")
    second = viewer.add_labels(truth[0], name="truth")
    assert [widget.layer_combo.itemText(i) for i in range(2)] == ["first", "truth"]
    assert widget.labels_layer is first and widget.apply_button.isEnabled()  # the pick is kept as layers come
    widget.layer_combo.setCurrentIndex(1)
    assert widget.labels_layer is second
    widget.select_profile("Li-ion cylindrical cell")
    widget.apply_button.click()
    assert list(second.features["class"])[:3] == ["background", "casing", "cathode"]
    assert "Applied 'Li-ion cylindrical cell' to 'truth'" in widget.status.text()
    assert first.features.shape[1] == 0
    second.name = "renamed"
    assert widget.layer_combo.itemText(1) == "renamed"
    viewer.layers.remove(first)
    assert widget.layer_combo.count() == 1 and widget.labels_layer is second

    SCREENSHOTS.mkdir(exist_ok=True)
    second.visible = True
    widget.table.setCurrentCell(1, NAME)
    viewer.window._qt_window.resize(1400, 900)
    viewer.reset_view()
    qtbot.waitUntil(dock.isVisible)
    qtbot.wait(50)
    viewer.screenshot(SCREENSHOTS / "profile_widget.png", canvas_only=False)


def _rgb(color: str) -> np.ndarray:
    return np.array([int(color[i : i + 2], 16) / 255 for i in (1, 3, 5)])


def test_a_closed_widget_is_disconnected(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    before = len(PROFILES.changed)
    dock, widget = viewer.window.add_plugin_dock_widget("rwth-sam", "Segmentation profiles")
    assert len(PROFILES.changed) == before + 1
    viewer.close()  # Qt deletes the docked widget with the window
    qtbot.waitUntil(lambda: len(PROFILES.changed) == before)
    PROFILES.add(Profile("after close"))  # would raise if it reached the deleted widget


def test_buttons_open_their_dialogs(widget, tmp_path, monkeypatch):
    """The colour swatch, Save… and Open… reach their dialogs (stubbed: modal dialogs block)."""
    from qtpy.QtGui import QColor

    from rwth_sam.ui import profile_widget

    widget.new_profile("Dialogs")
    widget.add_button.click()  # also starts editing the new class's name
    monkeypatch.setattr(profile_widget.QColorDialog, "getColor", lambda *args: QColor("#00FF00"))
    widget.table.cellWidget(0, 2).click()
    assert widget.profile.classes[0].color == "#00ff00"
    monkeypatch.setattr(profile_widget.QFileDialog, "getSaveFileName", lambda *args: (str(tmp_path / "dialogs"), ""))
    widget.save_button.click()
    assert Profile.load(tmp_path / "dialogs.json") == widget.profile
    widget.close_profile()
    monkeypatch.setattr(profile_widget.QFileDialog, "getOpenFileName", lambda *args: (str(tmp_path / "dialogs.json"), ""))
    widget.open_button.click()
    assert widget.profile.name == "Dialogs" and widget.profile.classes[0].color == "#00ff00"
