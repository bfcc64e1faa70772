"""Profiles in napari: the reader, the session's profile store, the profile widget and apply_profile."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from napari.errors import MultipleReaderError
from napari.qt import QtViewer
from napari.utils.notifications import NotificationSeverity
from npe2 import DynamicPlugin, PluginManager
from qtpy.QtCore import QMimeData, QPoint, QPointF, Qt, QTimer, QUrl
from qtpy.QtGui import QColor, QDragEnterEvent, QDropEvent
from qtpy.QtWidgets import (
    QApplication,
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QLineEdit,
    QRadioButton,
    QSpinBox,
)

from rwth_sam.core.labels.profile_store import PROFILES, ProfileStore
from rwth_sam.core.labels.profiles import UNKNOWN_LABEL_COLOR, Profile, SegmentationClass
from rwth_sam.core.phantom import CLASS_NAMES, battery_phantom
from rwth_sam.ui import profile_widget, reader
from rwth_sam.ui.profile_widget import COLOR, DESCRIPTION, NAME, VALUE, ProfileWidget, apply_profile

from conftest import CATALOGUE, DIRECTORY, MAX_CLASSES, MISSING, many_classes, messages, write_case
from napari_helpers import remember_reader

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("profile_store")]

SCREENSHOTS = Path(__file__).resolve().parents[1] / "screenshots"
EXAMPLES = ["Abdominal CT", "Li-ion cylindrical cell"]


@pytest.fixture
def widget(viewer):
    """A profile widget docked in the viewer (so it is destroyed, and disconnected, with it)."""
    widget = ProfileWidget(viewer)
    viewer.window.add_dock_widget(widget, name="profiles")
    return widget


def cell(widget: ProfileWidget, row: int, column: int, role=Qt.DisplayRole):
    """What the table shows in a cell."""
    return widget.model.index(row, column).data(role)


def edit_cell(qtbot, widget: ProfileWidget, row: int, column: int, value) -> None:
    """Edit a cell as a user does: open its editor (line edit, or spin box for label values), type, press Enter."""
    index = widget.model.index(row, column)
    widget.table.setCurrentIndex(index)
    widget.table.edit(index)
    editor = widget.table.indexWidget(index)
    assert isinstance(editor, QSpinBox if column == VALUE else QLineEdit), editor
    if isinstance(editor, QSpinBox):
        editor.setValue(value)
    else:
        editor.setText(value)
    qtbot.keyClick(editor, Qt.Key_Return)
    qtbot.waitUntil(lambda: widget.table.indexWidget(index) is None)  # the delegate commits in a queued call


def double_click_cell(qtbot, widget: ProfileWidget, row: int, column: int) -> None:
    viewport = widget.table.viewport()
    position = widget.table.visualRect(widget.model.index(row, column)).center()
    qtbot.mouseClick(viewport, Qt.LeftButton, pos=position)
    qtbot.mouseDClick(viewport, Qt.LeftButton, pos=position)


def cell_profile() -> Profile:
    return Profile(
        "My cell",
        (SegmentationClass("casing", 1, "#9e9e9e"), SegmentationClass("anode", 3, "#1f77b4", "graphite")),
        "for the tests",
    )


# ----------------------------------------------------------------- reader


def test_opening_a_profile_adds_it_and_no_layer(viewer, tmp_path, notifications):
    path = cell_profile().save(tmp_path / "cell.json")
    assert reader.get_reader(str(path)) is reader.read_profiles
    added = viewer.open(path, plugin="rwth-sam")
    assert added == [] and len(viewer.layers) == 0
    assert PROFILES.get("My cell") == cell_profile()
    assert any(
        "Profile 'My cell' (2 classes) from cell.json" in text
        for text in messages(notifications, NotificationSeverity.INFO)
    )
    # without naming the plugin (as drag and drop does): rwth-sam is the only reader for it
    PROFILES.remove("My cell")
    assert viewer.open(str(path), plugin=None) == [] and "My cell" in PROFILES


NOT_A_PROFILE = (
    "other.json is not a segmentation profile, and no other installed plugin reads .json files, so nothing was "
    "opened. Cannot load profile {path}: format: not an rwth-sam profile: 'format' is missing, expected "
    '"rwth-sam-profile"'
)


def drop(viewer, path) -> None:
    """Drag and drop a file onto the viewer: the events the window system sends its canvas widget (Qt hands a drop
    to the widget that accepted the drag's entering)."""
    qt_viewer = next(w for w in QApplication.allWidgets() if isinstance(w, QtViewer) and w.viewer is viewer)
    data = QMimeData()
    data.setUrls([QUrl.fromLocalFile(str(path))])
    drag = (Qt.DropAction.CopyAction, data, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(qt_viewer, QDragEnterEvent(QPoint(10, 10), *drag))
    QApplication.sendEvent(qt_viewer, QDropEvent(QPointF(10, 10), *drag))


def answer_reader_dialog(display_name: str, offered: list, tries: int = 500) -> None:
    """When napari's reader dialog opens (a modal dialog, run in its own event loop), note the readers it offers,
    pick ``display_name`` without remembering the choice, and press OK; as a user would."""
    dialog = QApplication.activeModalWidget()
    if not isinstance(dialog, QDialog):
        if tries:
            QTimer.singleShot(10, lambda: answer_reader_dialog(display_name, offered, tries - 1))
        return
    buttons = dialog.findChildren(QRadioButton)
    offered.append(sorted(button.text() for button in buttons))
    next(button for button in buttons if button.text() == display_name).setChecked(True)
    for remember in dialog.findChildren(QCheckBox):
        remember.setChecked(False)
    dialog.findChild(QDialogButtonBox).button(QDialogButtonBox.StandardButton.Ok).click()


def test_another_json_file_is_told_apart_from_a_profile(viewer, tmp_path, notifications):
    """File > Open and drag and drop (plugin=None): with rwth-sam the only *.json reader, napari 0.9 hands it every
    JSON file; before, it then raised ReaderPluginError ("Tried to read other.json with plugin rwth-sam, because
    ... it gave an error"), a traceback. Now the user is told the file is not a profile, and why."""
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"images": [], "annotations": []}))
    assert viewer.open(other, plugin=None) == []
    drop(viewer, other)
    assert messages(notifications, NotificationSeverity.ERROR) == [NOT_A_PROFILE.format(path=other)] * 2
    assert PROFILES.names == EXAMPLES and len(viewer.layers) == 0
    assert reader.get_reader(str(tmp_path / "image.tif")) is None  # not a .json file: never claimed

    profile = cell_profile().save(tmp_path / "cell.json")  # and profiles still open by drag and drop
    drop(viewer, profile)
    assert PROFILES.get("My cell") == cell_profile() and len(viewer.layers) == 0


@pytest.fixture
def json_points_plugin():
    """Another installed plugin that reads *.json files: {"points": [[row, col], ...]} as a points layer."""
    manager = PluginManager.instance()
    plugin = DynamicPlugin("json-points-for-tests", plugin_manager=manager)
    plugin.manifest.display_name = "JSON points for tests"

    @plugin.contribute.reader(filename_patterns=["*.json"])
    def get_points_reader(path):
        def read(path):
            return [(np.array(json.loads(Path(path).read_text())["points"], float), {"name": "json points"}, "points")]

        return read if isinstance(path, str) and "points" in Path(path).read_text() else None

    # napari's menus need not know it: each viewer made so far would add its commands to them once more, and fail
    with manager.events.plugins_registered.blocked():
        plugin.register()
    yield plugin
    plugin.cleanup()


def test_another_json_reader_gets_the_other_json_files(
    viewer, tmp_path, notifications, monkeypatch, json_points_plugin
):
    """With another *.json reader installed, rwth-sam leaves other JSON files to it: napari asks which plugin to use
    (its reader dialog, answered here as a user does), and offers the other one when rwth-sam refuses a file."""
    points = tmp_path / "points.json"
    points.write_text(json.dumps({"points": [[1, 2], [3, 4]]}))
    profile = cell_profile().save(tmp_path / "cell.json")
    assert reader.get_reader(str(points)) is None and reader.get_reader(str(profile)) is reader.read_profiles
    with pytest.raises(MultipleReaderError):
        viewer.open(points, plugin=None)  # two readers for *.json: napari asks

    offered = []

    def choose(display_name):
        QTimer.singleShot(0, lambda: answer_reader_dialog(display_name, offered))

    choose("JSON points for tests")
    drop(viewer, points)
    assert [layer.name for layer in viewer.layers] == ["json points"]
    choose("RWTH SAM")
    drop(viewer, profile)
    assert PROFILES.get("My cell") == cell_profile()
    assert offered == [["JSON points for tests", "RWTH SAM"]] * 2

    # *.json associated with rwth-sam (a remembered choice): it refuses the points file, so napari offers the other
    remember_reader(monkeypatch, "rwth-sam")
    choose("JSON points for tests")
    drop(viewer, points)
    assert [layer.name for layer in viewer.layers] == ["json points", "json points [1]"]
    assert offered[-1] == ["JSON points for tests"]
    assert messages(notifications, NotificationSeverity.ERROR) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '{"format": "rwth-sam-profile", "version": 1, "name": "x",, "classes": []}',
            "not valid JSON: Expecting property name enclosed in double quotes at line 1, column 58",
        ),
        (
            '{"format": "rwth-sam-profile", "version": 7, "name": "x"}',
            "version: profile format version 7 is not supported; this rwth-sam reads version 1",
        ),
        (
            '{"format": "rwth-sam-profile", "version": 1, "name": "x", "classes": [{"name": "a", "value": 0, "color": "#000000"}]}',
            "classes[0].value: must be from 1",
        ),
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
    assert widget.profile.name == EXAMPLES[0] and widget.model.rowCount() == len(PROFILES.get(EXAMPLES[0]).classes)
    widget.profile_combo.setCurrentIndex(1)
    assert widget.profile.name == "Li-ion cylindrical cell"
    assert [cell(widget, row, NAME) for row in range(3)] == ["casing", "cathode", "anode"]
    assert cell(widget, 0, COLOR) == "#9e9e9e" and cell(widget, 0, COLOR, Qt.BackgroundRole) == QColor("#9e9e9e")


def test_edit_classes_save_and_reload(widget, tmp_path, qtbot):
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
    edit_cell(qtbot, widget, 1, NAME, "anode")
    edit_cell(qtbot, widget, 1, VALUE, 3)
    edit_cell(qtbot, widget, 1, DESCRIPTION, "graphite")
    widget.set_color(1, "#0000ff")
    assert widget.profile.classes[1] == SegmentationClass("anode", 3, "#0000ff", "graphite")
    assert cell(widget, 1, COLOR) == "#0000ff" and cell(widget, 1, COLOR, Qt.BackgroundRole) == QColor("#0000ff")
    assert cell(widget, 1, COLOR, Qt.ForegroundRole) == QColor("#ffffff")  # readable on dark blue

    # reorder with the buttons: the selection follows the moved class
    widget.set_current_cell(2, NAME)
    widget.up_button.click()
    assert [c.name for c in widget.profile.classes] == ["cathode", "separator", "anode"]
    assert widget.current_row == 1
    widget.up_button.click()
    assert [c.name for c in widget.profile.classes] == ["separator", "cathode", "anode"]
    assert not widget.up_button.isEnabled() and widget.down_button.isEnabled()
    widget.down_button.click()
    assert [c.name for c in widget.profile.classes] == ["cathode", "separator", "anode"]

    # delete, then add: the deleted class's value is not reused while a larger one is in use
    widget.set_current_cell(0, NAME)
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
    assert widget.profile is PROFILES.get("Electrodes") and widget.model.rowCount() == 3


def test_invalid_edits_are_refused_with_a_message(widget, notifications, qtbot):
    PROFILES.add(cell_profile())
    widget.select_profile("My cell")
    edit_cell(qtbot, widget, 1, NAME, "Casing")
    assert "Row 2, name: 'Casing' is already the name of row 1; class names must be unique" == widget.status.text()
    assert cell(widget, 1, NAME) == "anode" and PROFILES.get("My cell") == cell_profile()
    edit_cell(qtbot, widget, 1, VALUE, 1)
    assert widget.status.text().startswith("Row 2, label value: 1 is already the label value of row 1 ('casing')")
    assert cell(widget, 1, VALUE) == 3
    widget.set_color(0, "red")
    assert widget.status.text().startswith("Row 1, colour: 'red' is not a colour of the form #rrggbb")
    widget.rename_profile(" ")
    assert widget.status.text() == "Profile name: must not be empty" and widget.name_edit.text() == "My cell"
    widget.rename_profile("Abdominal CT")
    assert (
        widget.status.text() == "There is already a profile named 'Abdominal CT'." and widget.profile.name == "My cell"
    )
    assert PROFILES.get("My cell") == cell_profile() and len(messages(notifications, NotificationSeverity.ERROR)) == 5


def test_widget_follows_the_store(widget, viewer, tmp_path):
    path = cell_profile().save(tmp_path / "cell.json")
    viewer.open(path, plugin="rwth-sam")  # another way in: the reader
    assert widget.profile_combo.count() == 3 and widget.profile_combo.itemText(2) == "My cell"
    widget.select_profile("My cell")
    PROFILES.add(Profile("My cell", (SegmentationClass("only", 9, "#123456"),)))
    assert widget.model.rowCount() == 1 and cell(widget, 0, NAME) == "only"
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
    widget.set_current_cell(1, NAME)
    viewer.window.resize(1400, 900)
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


def test_buttons_open_their_dialogs(widget, tmp_path, monkeypatch, qtbot):
    """The colour cell (double click or Enter), Save… and Open… reach their dialogs (stubbed: modal dialogs block)."""
    widget.new_profile("Dialogs")
    widget.add_button.click()  # also starts editing the new class's name
    editor = widget.table.indexWidget(widget.model.index(0, NAME))
    qtbot.keyClick(editor, Qt.Key_Escape)
    qtbot.waitUntil(lambda: widget.table.indexWidget(widget.model.index(0, NAME)) is None)
    monkeypatch.setattr(profile_widget.QColorDialog, "getColor", lambda *args: QColor("#00FF00"))
    double_click_cell(qtbot, widget, 0, COLOR)
    assert widget.profile.classes[0].color == "#00ff00"
    monkeypatch.setattr(profile_widget.QColorDialog, "getColor", lambda *args: QColor("#123456"))
    widget.set_current_cell(0, COLOR)
    qtbot.keyClick(widget.table, Qt.Key_Return)
    assert widget.profile.classes[0].color == "#123456"
    monkeypatch.setattr(profile_widget.QColorDialog, "getColor", lambda *args: QColor())  # cancelled
    double_click_cell(qtbot, widget, 0, COLOR)
    assert widget.profile.classes[0].color == "#123456"
    monkeypatch.setattr(profile_widget.QFileDialog, "getSaveFileName", lambda *args: (str(tmp_path / "dialogs"), ""))
    widget.save_button.click()
    assert Profile.load(tmp_path / "dialogs.json") == widget.profile
    widget.close_profile()
    monkeypatch.setattr(
        profile_widget.QFileDialog, "getOpenFileName", lambda *args: (str(tmp_path / "dialogs.json"), "")
    )
    widget.open_button.click()
    assert widget.profile.name == "Dialogs" and widget.profile.classes[0].color == "#123456"


# ----------------------------------------------------------------- limits (issue 9)


def test_a_profile_of_the_most_classes_shows_at_once(widget, tmp_path, qtbot):
    """Showing a profile of MAX_CLASSES classes took 7 s with a button per row (a 560 000-class file froze napari
    for minutes); the table draws only the rows in view."""
    atlas = Profile("Atlas", many_classes(MAX_CLASSES, "a structure"))
    path = atlas.save(tmp_path / "atlas.json")
    widget.viewer.window.resize(1200, 900)
    QApplication.processEvents()

    started = time.perf_counter()
    assert widget.open_from(path) == atlas
    QApplication.processEvents()  # lay out and paint
    shown = time.perf_counter() - started
    print(f"opened and showed a profile of {MAX_CLASSES} classes in {shown:.3f} s")
    assert shown < 1.0
    assert widget.model.rowCount() == MAX_CLASSES and cell(widget, MAX_CLASSES - 1, NAME) == f"class {MAX_CLASSES}"

    started = time.perf_counter()
    widget.set_color(MAX_CLASSES - 1, "#000000")  # an edit re-validates the profile and redraws
    widget.table.scrollToBottom()
    QApplication.processEvents()
    assert time.perf_counter() - started < 0.5
    assert cell(widget, MAX_CLASSES - 1, COLOR, Qt.BackgroundRole) == QColor("#000000")


def test_one_class_more_than_the_most_is_refused(widget, notifications):
    PROFILES.add(Profile("Atlas", many_classes(MAX_CLASSES)))
    widget.select_profile("Atlas")
    before = PROFILES.profiles
    widget.add_button.click()
    assert widget.status.text() == "Classes: 5001 classes are too many: a profile may hold at most 5000"
    assert messages(notifications, NotificationSeverity.ERROR) == [widget.status.text()]
    assert PROFILES.profiles == before and widget.model.rowCount() == MAX_CLASSES


# ----------------------------------------------------------------- catalogue (issue 9), as a user opens the files

GUI_CASES = [pytest.param(content, claimed, problem, id=case) for case, content, claimed, problem in CATALOGUE]


@pytest.mark.parametrize(("content", "claimed", "problem"), GUI_CASES)
def test_catalogue_opened_in_napari_and_in_the_widget(
    widget, tmp_path, notifications, monkeypatch, content, claimed, problem
):
    """Each bad file, opened with the widget's Open… button and with File > Open (``viewer.open(plugin=None)``, as
    napari's menu and drag and drop do): one clear message each, the same as the core's, no traceback, no layer,
    and neither the profiles nor the table change."""
    path = write_case(tmp_path, content)
    message = f"Cannot load profile {path}: {problem}"
    before, shown = PROFILES.profiles, widget.model.classes

    monkeypatch.setattr(profile_widget.QFileDialog, "getOpenFileName", lambda *args: (str(path), ""))
    widget.open_button.click()
    assert widget.status.text() == message
    expected = [message]
    if content not in (DIRECTORY, MISSING):  # napari's File > Open offers neither
        assert widget.viewer.open(path, plugin=None) == []
        unclaimed = (
            "case.json is not a segmentation profile, and no other installed plugin reads .json files, so nothing "
            f"was opened. {message}"
        )
        expected.append(message if claimed else unclaimed)
    assert messages(notifications, NotificationSeverity.ERROR) == expected
    assert PROFILES.profiles == before and widget.model.classes == shown and len(widget.viewer.layers) == 0


# ----------------------------------------------------------------- unexpected failures (issue 9)


def _fail(*_args, **_kwargs):
    raise RuntimeError("the disk went away")


@pytest.mark.parametrize(
    ("patch", "act", "told"),
    [
        ((Profile, "load"), lambda w, bot: w.open_button.click(), "Opening a profile failed"),
        ((Profile, "save"), lambda w, bot: w.save_button.click(), "Saving the profile failed"),
        ((profile_widget, "apply_profile"), lambda w, bot: w.apply_button.click(), "Applying the profile failed"),
        ((profile_widget.QColorDialog, "getColor"), lambda w, bot: double_click_cell(bot, w, 0, COLOR), "Picking the colour failed"),
        ((ProfileStore, "get"), lambda w, bot: w.profile_combo.setCurrentIndex(0), "Picking the profile failed"),
        ((ProfileStore, "replace"), lambda w, bot: (w.name_edit.setText("renamed"), w.name_edit.editingFinished.emit()), "Renaming the profile failed"),
        ((ProfileStore, "add"), lambda w, bot: edit_cell(bot, w, 0, NAME, "shell"), "Editing the class failed"),
        ((ProfileStore, "add"), lambda w, bot: w.add_button.click(), "Adding a class failed"),
        ((ProfileStore, "remove"), lambda w, bot: w.remove_profile_button.click(), "Closing the profile failed"),
    ],
    ids=["open", "save", "apply", "colour", "pick a profile", "rename", "edit a cell", "add a class", "close"],
)  # fmt: skip
def test_an_unexpected_failure_is_a_short_message(
    widget, viewer, tmp_path, notifications, monkeypatch, qtbot, patch, act, told
):
    """A fault nobody anticipated, in any of the widget's handlers, is told in one line and changes nothing; before,
    it escaped into Qt's event loop, and napari showed a traceback."""
    PROFILES.add(cell_profile())
    widget.select_profile("My cell")
    viewer.add_labels(np.zeros((8, 8), np.uint8))
    path = cell_profile().save(tmp_path / "cell.json")
    monkeypatch.setattr(profile_widget.QFileDialog, "getOpenFileName", lambda *args: (str(path), ""))
    monkeypatch.setattr(profile_widget.QFileDialog, "getSaveFileName", lambda *args: (str(tmp_path / "saved.json"), ""))
    before = PROFILES.profiles
    with monkeypatch.context() as failing:  # only while acting (the fixtures' teardown loads the examples)
        failing.setattr(*patch, _fail)
        act(widget, qtbot)
    expected = f"{told} (RuntimeError: the disk went away). Nothing was changed."
    assert widget.status.text() == expected
    assert messages(notifications, NotificationSeverity.ERROR) == [expected]
    assert PROFILES.profiles == before and not (tmp_path / "saved.json").exists()
    assert widget.profile == cell_profile() and widget.model.classes == cell_profile().classes  # still shown
