"""Plugins > RWTH SAM > Segmentation profiles: pick, create and edit profiles, and apply one to a labels layer.

A profile is a named list of classes (name, label value, colour, description); see
``rwth_sam.core.labels.profiles``, which also holds the rules for new classes and the wording of errors
in the table. Every edit goes through the core's validation and into the session's ``PROFILES`` store
(``rwth_sam.core.labels.profile_store``) at once, so other widgets see it. ``apply_profile`` colours a labels layer by
class and gives it the class names as features, which napari's status bar shows on hover.

The class table is a ``QTableView`` over a model of the profile's classes: cells are drawn on demand
(the colour is the cell's background; double click or Enter opens the colour dialog), so a profile
of ``MAX_CLASSES`` classes shows at once. Every handler runs through ``reporting.guarded``: a
failure is a short message in the status line and a notification, never a traceback.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import napari
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.notifications import show_error
from qtpy.QtCore import QAbstractTableModel, QModelIndex, Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QColorDialog,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QStyledItemDelegate,
    QTableView,
    QVBoxLayout,
    QWidget,
)
from superqt.utils import signals_blocked

from rwth_sam.core.errors import RwthSamError
from rwth_sam.core.labels.profile_store import PROFILES, ProfileStore
from rwth_sam.core.labels.profiles import (
    MAX_LABEL_VALUE,
    UNKNOWN_LABEL_COLOR,
    Profile,
    ProfileError,
    SegmentationClass,
    readable_text_color,
)
from rwth_sam.ui.reporting import guarded

NAME, VALUE, COLOR, DESCRIPTION = range(4)
COLUMNS = ("Name", "Value", "Colour", "Description")
FIELDS = ("name", "value", "color", "description")  # the SegmentationClass field of each column


def apply_profile(profile: Profile, labels_layer: napari.layers.Labels, unknown: str = UNKNOWN_LABEL_COLOR) -> None:
    """Colour ``labels_layer`` by the profile's classes and name its label values (shown on hover).

    Label values that are not in the profile are drawn in ``unknown`` (grey), so no pixel vanishes.
    """
    labels_layer.colormap = DirectLabelColormap(color_dict=profile.color_dict(unknown=unknown))
    labels_layer.features = profile.features()


def _user_message(error: RwthSamError) -> str:
    """An error as the widget shows it: a profile's error in the table's words (rows, columns)."""
    return error.table_message() if isinstance(error, ProfileError) else str(error)


class ClassTableModel(QAbstractTableModel):
    """The classes of the shown profile, one row each; an edit goes to ``commit(row, field, value)``, which
    validates it and says whether it was taken."""

    def __init__(self, commit: Callable[[int, str, object], bool]):
        super().__init__()
        self.classes: tuple[SegmentationClass, ...] = ()
        self._commit = commit

    def show(self, classes: tuple[SegmentationClass, ...]) -> None:
        """Show these classes; the same number of rows keeps the view's current cell and selection."""
        if len(classes) != len(self.classes):
            self.beginResetModel()
            self.classes = classes
            self.endResetModel()
        elif classes != self.classes:
            self.classes = classes
            self.dataChanged.emit(self.index(0, 0), self.index(len(classes) - 1, len(COLUMNS) - 1))

    def rowCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self.classes)

    def columnCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section, orientation, role=Qt.DisplayRole):
        if orientation == Qt.Horizontal and role == Qt.DisplayRole:
            return COLUMNS[section]
        return super().headerData(section, orientation, role)

    def data(self, index, role=Qt.DisplayRole):
        item = self.classes[index.row()]
        column = index.column()
        if role in (Qt.DisplayRole, Qt.EditRole):
            return getattr(item, FIELDS[column])
        if column == COLOR:
            return {
                Qt.BackgroundRole: QColor(item.color),
                Qt.ForegroundRole: QColor(readable_text_color(item.color)),
                Qt.ToolTipRole: "Double-click (or Enter) to pick the class's colour",
            }.get(role)
        if column == DESCRIPTION and role == Qt.ToolTipRole:
            return item.description
        if column == VALUE and role == Qt.TextAlignmentRole:
            return int(Qt.AlignRight | Qt.AlignVCenter)
        return None

    def flags(self, index):
        flags = Qt.ItemIsEnabled | Qt.ItemIsSelectable
        return flags if index.column() == COLOR else flags | Qt.ItemIsEditable

    def setData(self, index, value, role=Qt.EditRole) -> bool:
        if role != Qt.EditRole or not index.isValid():
            return False
        return self._commit(index.row(), FIELDS[index.column()], value)


class _ValueDelegate(QStyledItemDelegate):
    """Label values are edited with a spin box from 1."""

    def createEditor(self, parent, option, index):
        if index.column() != VALUE:
            return super().createEditor(parent, option, index)
        editor = QSpinBox(parent)
        editor.setRange(1, MAX_LABEL_VALUE)
        return editor


class ProfileWidget(QWidget):
    """Plugins > RWTH SAM > Segmentation profiles."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, store: ProfileStore = PROFILES):
        super().__init__()
        self.viewer = napari_viewer
        self.store = store
        self.current_name: str | None = None
        self.paths: dict[str, Path] = {}  # where each profile was last opened from or saved to
        self._labels_layers: list[napari.layers.Labels] = []

        self.profile_combo = QComboBox()
        self.profile_combo.setToolTip("The profiles open in this session (examples, opened files, new ones)")
        self.new_button = QPushButton("New")
        self.new_button.setToolTip("A new, empty profile")
        self.remove_profile_button = QPushButton("Close")
        self.remove_profile_button.setToolTip("Close this profile (its file, if saved, is kept)")
        self.name_edit = QLineEdit()
        self.name_edit.setToolTip("The profile's name: edit it to rename the profile")
        self.description_edit = QLineEdit()
        self.description_edit.setPlaceholderText("What the profile is for")

        self.model = ClassTableModel(self._commit_cell)
        self.table = QTableView()
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.table.setItemDelegate(_ValueDelegate(self.table))
        self.table.verticalHeader().setDefaultSectionSize(24)
        self.table.verticalHeader().setSectionResizeMode(QHeaderView.Fixed)  # no row is measured
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(NAME, QHeaderView.Interactive)
        header.setSectionResizeMode(VALUE, QHeaderView.Interactive)
        header.setSectionResizeMode(COLOR, QHeaderView.Interactive)
        header.setSectionResizeMode(DESCRIPTION, QHeaderView.Stretch)
        self.table.setColumnWidth(NAME, 130)
        for column, widest in ((VALUE, "2147483647"), (COLOR, "#dddddd")):  # set, not measured over 5000 rows
            text, title = self.table.fontMetrics(), header.fontMetrics()
            width = max(text.horizontalAdvance(widest), title.horizontalAdvance(COLUMNS[column]))
            self.table.setColumnWidth(column, width + 24)
        self.table.setMinimumHeight(200)

        self.add_button = QPushButton("Add class")
        self.remove_class_button = QPushButton("Delete")
        self.up_button = QPushButton("Up")
        self.down_button = QPushButton("Down")
        self.open_button = QPushButton("Open…")
        self.save_button = QPushButton("Save…")
        self.layer_combo = QComboBox()
        self.layer_combo.setToolTip("The labels layer to colour and name by this profile")
        self.apply_button = QPushButton("Apply to labels layer")
        self.apply_button.setToolTip("Colour the layer's labels by class; hovering shows the class name")
        self.status = QLabel("")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Profile", _row(self.profile_combo, self.new_button, self.remove_profile_button, stretch=0))
        form.addRow("Name", self.name_edit)
        form.addRow("Description", self.description_edit)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.table, 1)  # the table takes the dock's free height
        layout.addLayout(_row(self.add_button, self.remove_class_button, self.up_button, self.down_button))
        layout.addLayout(_row(self.open_button, self.save_button))
        apply_form = QFormLayout()
        apply_form.addRow("Labels layer", self.layer_combo)
        layout.addLayout(apply_form)
        layout.addWidget(self.apply_button)
        layout.addWidget(self.status)

        slot = self._slot
        self.profile_combo.currentIndexChanged.connect(slot("Picking the profile", self._on_combo_changed))
        self.new_button.clicked.connect(slot("Making a new profile", self._on_new_clicked))
        self.remove_profile_button.clicked.connect(slot("Closing the profile", self.close_profile))
        self.name_edit.editingFinished.connect(
            slot("Renaming the profile", lambda: self.rename_profile(self.name_edit.text()))
        )
        self.description_edit.editingFinished.connect(
            slot("Changing the description", lambda: self.set_description(self.description_edit.text()))
        )
        self.table.selectionModel().currentChanged.connect(slot("Picking a class", self._update_buttons))
        self.table.activated.connect(slot("Picking the colour", self._on_activated))
        self.add_button.clicked.connect(slot("Adding a class", self._on_add_clicked))
        self.remove_class_button.clicked.connect(
            slot("Deleting the class", lambda: self.remove_class(self.current_row))
        )
        self.up_button.clicked.connect(slot("Moving the class", lambda: self.move_class(self.current_row, -1)))
        self.down_button.clicked.connect(slot("Moving the class", lambda: self.move_class(self.current_row, +1)))
        self.open_button.clicked.connect(slot("Opening a profile", self._open_dialog))
        self.save_button.clicked.connect(slot("Saving the profile", self._save_dialog))
        self.apply_button.clicked.connect(slot("Applying the profile", self.apply_to_layer))

        layer_events = napari_viewer.layers.events
        refresh_layers = slot("Listing the labels layers", self._refresh_layers)
        connections = [(store.changed, slot("Showing the profiles", self._refresh))]
        for event in (layer_events.inserted, layer_events.removed, layer_events.reordered):
            connections.append((event, refresh_layers))
        if hasattr(layer_events, "renamed"):
            connections.append((layer_events.renamed, refresh_layers))
        for signal, callback in connections:
            signal.connect(callback)
        self.destroyed.connect(functools.partial(_disconnect, connections))

        names = store.names
        self.current_name = names[0] if names else None
        self._refresh()
        self._refresh_layers()

    def _slot(self, what: str, handler: Callable[[], object]) -> Callable:
        """``handler`` as a slot: the signal's arguments are dropped, and a failure is a short message."""
        run = guarded(what, self._report)(handler)
        return lambda *_signal_arguments: run()

    # ----------------------------------------------------------------- profile
    @property
    def profile(self) -> Profile | None:
        return None if self.current_name is None else self.store.get(self.current_name)

    @contextmanager
    def _showing(self, name: str | None) -> Iterator[None]:
        """Show profile ``name`` from now on (a store change redraws the widget at once); if the change fails,
        the profile shown before stays."""
        shown = self.current_name
        self.current_name = name
        try:
            yield
        except BaseException:
            self.current_name = shown
            self._refresh()
            raise

    def select_profile(self, name: str) -> Profile:
        if name not in self.store:
            raise KeyError(name)
        with self._showing(name):
            self._refresh()
        return self.profile

    def new_profile(self, name: str | None = None) -> Profile:
        profile = Profile(name or self.store.unique_name("New profile"))
        if profile.name in self.store:
            return self._report(ProfileError(f"There is already a profile named '{profile.name}'."))
        with self._showing(profile.name):
            self.store.add(profile)
        self._say(f"New profile '{profile.name}': add its classes, then save it.")
        return profile

    def rename_profile(self, name: str) -> Profile | None:
        profile = self.profile
        if profile is None or name.strip() == profile.name:
            return profile
        old = profile.name
        try:
            renamed = replace(profile, name=name)
            with self._showing(renamed.name):
                self.store.replace(old, renamed)
        except RwthSamError as error:
            self._refresh()  # the name field shows the old name again
            return self._report(error)
        if old in self.paths:
            self.paths[renamed.name] = self.paths.pop(old)
        self._say(f"Renamed '{old}' to '{renamed.name}'.")
        return renamed

    def set_description(self, description: str) -> Profile | None:
        return self._commit(description=description)

    def close_profile(self) -> None:
        """Take the current profile out of this session (a saved file is not touched)."""
        profile = self.profile
        if profile is None:
            return
        index = self.store.names.index(profile.name)
        remaining = [name for name in self.store.names if name != profile.name]
        with self._showing(remaining[min(index, len(remaining) - 1)] if remaining else None):
            self.store.remove(profile.name)
        self._say(f"Closed '{profile.name}'.")

    # ----------------------------------------------------------------- classes
    def add_class(
        self, name: str | None = None, value: int | None = None, color: str | None = None, description: str = ""
    ) -> SegmentationClass | None:
        """Append a class; by default with a new name, the next free label value and an unused colour."""
        profile = self.profile
        if profile is None:
            profile = self.new_profile()
        try:
            item = profile.new_class(name, value, color, description)
        except ProfileError as error:
            return self._report(error)
        if self._commit(classes=(*profile.classes, item)) is None:
            return None
        self.set_current_cell(len(profile.classes), NAME)
        return item

    def set_class(self, row: int, **changes) -> SegmentationClass | None:
        """Change fields (name, value, color, description) of the class in ``row``."""
        profile = self.profile
        try:
            item = replace(profile.classes[row], **changes)
        except ProfileError as error:
            self._refresh()
            return self._report(error.in_class(row))
        classes = list(profile.classes)
        classes[row] = item
        return item if self._commit(classes=tuple(classes)) is not None else None

    def _commit_cell(self, row: int, field: str, value) -> bool:
        """A table edit (``ClassTableModel.setData``): whether it was taken."""
        return guarded("Editing the class", self._report)(self.set_class)(row, **{field: value}) is not None

    def set_color(self, row: int, color: str) -> SegmentationClass | None:
        return self.set_class(row, color=color)

    def remove_class(self, row: int) -> None:
        profile = self.profile
        if profile is None or not 0 <= row < len(profile.classes):
            return
        classes = list(profile.classes)
        removed = classes.pop(row)
        if self._commit(classes=tuple(classes)) is not None:
            self.set_current_cell(min(row, len(classes) - 1), NAME)
            self._say(f"Deleted class '{removed.name}' (label value {removed.value}).")

    def move_class(self, row: int, offset: int) -> None:
        """Move the class in ``row`` up (offset -1) or down (+1) the list."""
        profile = self.profile
        target = row + offset
        if profile is None or not 0 <= row < len(profile.classes) or not 0 <= target < len(profile.classes):
            return
        classes = list(profile.classes)
        classes[row], classes[target] = classes[target], classes[row]
        if self._commit(classes=tuple(classes)) is not None:
            column = self.table.currentIndex().column()
            self.set_current_cell(target, column if column >= 0 else NAME)

    def _commit(self, **changes) -> Profile | None:
        """Validate a changed copy of the current profile and put it into the store."""
        profile = self.profile
        if profile is None:
            return None
        try:
            changed = replace(profile, **changes)
        except ProfileError as error:
            self._refresh()
            return self._report(error)
        if changed != profile:
            self.store.add(changed)
        self._say("")
        return changed

    # ----------------------------------------------------------------- files
    def save_to(self, path: str | Path) -> Path | None:
        profile = self.profile
        if profile is None:
            return self._report(ProfileError("There is no profile to save: create one with 'New'."))
        try:
            path = profile.save(path)
        except RwthSamError as error:
            return self._report(error)
        self.paths[profile.name] = path
        self._say(f"Saved '{profile.name}' to {path}.")
        return path

    def open_from(self, path: str | Path) -> Profile | None:
        try:
            profile = Profile.load(path)
        except RwthSamError as error:
            return self._report(error)
        replaced = profile.name in self.store
        with self._showing(profile.name):
            self.store.add(profile)
        self.paths[profile.name] = Path(path)
        note = " (replacing the open profile of that name)" if replaced else ""
        self._say(f"Opened '{profile.name}' from {Path(path).name}{note}.")
        return profile

    def _default_path(self) -> str:
        profile = self.profile
        if profile is not None and profile.name in self.paths:
            return str(self.paths[profile.name])
        return profile.file_name() if profile is not None else "profile.json"

    def _save_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Save segmentation profile", self._default_path(), "Profiles (*.json)"
        )
        if path:
            self.save_to(path if path.lower().endswith(".json") else f"{path}.json")

    def _open_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open segmentation profile", "", "Profiles (*.json);;All files (*)")
        if path:
            self.open_from(path)

    def _on_activated(self) -> None:
        """Double click or Enter on a colour cell opens the colour dialog."""
        index = self.table.currentIndex()
        if index.isValid() and index.column() == COLOR:
            self._pick_color(index.row())

    def _pick_color(self, row: int) -> None:
        item = self.profile.classes[row]
        color = QColorDialog.getColor(QColor(item.color), self, f"Colour of '{item.name}'")
        if color.isValid():
            self.set_color(row, color.name())

    # ----------------------------------------------------------------- labels layer
    @property
    def labels_layer(self) -> napari.layers.Labels | None:
        index = self.layer_combo.currentIndex()
        return self._labels_layers[index] if 0 <= index < len(self._labels_layers) else None

    def apply_to_layer(self, layer: napari.layers.Labels | None = None) -> napari.layers.Labels | None:
        layer = layer if layer is not None else self.labels_layer
        profile = self.profile
        if profile is None:
            return self._report(ProfileError("Pick or create a profile first."))
        if layer is None:
            return self._report(ProfileError("Pick a labels layer to apply the profile to."))
        apply_profile(profile, layer)
        self._say(f"Applied '{profile.name}' to '{layer.name}': {len(profile.classes)} classes coloured and named.")
        return layer

    def _refresh_layers(self, *_) -> None:
        current = self.labels_layer
        self._labels_layers = [layer for layer in self.viewer.layers if isinstance(layer, napari.layers.Labels)]
        with signals_blocked(self.layer_combo):
            self.layer_combo.clear()
            self.layer_combo.addItems([layer.name for layer in self._labels_layers])
            if current in self._labels_layers:
                self.layer_combo.setCurrentIndex(self._labels_layers.index(current))
            elif self._labels_layers:
                active = self.viewer.layers.selection.active
                labels = self._labels_layers
                self.layer_combo.setCurrentIndex(labels.index(active) if active in labels else len(labels) - 1)
        self.apply_button.setEnabled(bool(self._labels_layers) and self.profile is not None)

    # ----------------------------------------------------------------- view
    def _refresh(self) -> None:
        """Show the store's state: the profile list, the current profile's fields and classes."""
        names = self.store.names
        if self.current_name not in names:
            self.current_name = names[0] if names else None
        profile = self.profile

        with signals_blocked(self.profile_combo):
            if [self.profile_combo.itemText(i) for i in range(self.profile_combo.count())] != names:
                self.profile_combo.clear()
                self.profile_combo.addItems(names)
            self.profile_combo.setCurrentIndex(names.index(self.current_name) if profile else -1)
        for edit, text in ((self.name_edit, profile.name if profile else ""),
                           (self.description_edit, profile.description if profile else "")):  # fmt: skip
            if edit.text() != text:
                edit.setText(text)
                edit.setCursorPosition(0)  # a long description shows its start
            edit.setEnabled(profile is not None)

        self.model.show(profile.classes if profile else ())
        self._update_buttons()
        self.apply_button.setEnabled(bool(self._labels_layers) and profile is not None)

    @property
    def current_row(self) -> int:
        """The row of the table's current cell (-1: none)."""
        return self.table.currentIndex().row()

    def set_current_cell(self, row: int, column: int) -> None:
        self.table.setCurrentIndex(self.model.index(row, column))

    def _update_buttons(self) -> None:
        profile = self.profile
        count = len(profile.classes) if profile else 0
        row = self.current_row
        has_row = profile is not None and 0 <= row < count
        self.table.setEnabled(profile is not None)
        self.add_button.setEnabled(True)
        self.remove_class_button.setEnabled(has_row)
        self.up_button.setEnabled(has_row and row > 0)
        self.down_button.setEnabled(has_row and row < count - 1)
        self.save_button.setEnabled(profile is not None)
        self.remove_profile_button.setEnabled(profile is not None)

    def _on_combo_changed(self) -> None:
        index = self.profile_combo.currentIndex()
        if 0 <= index < len(self.store):
            self.select_profile(self.store.names[index])

    def _on_new_clicked(self) -> None:
        self.new_profile()
        self.name_edit.setFocus()
        self.name_edit.selectAll()

    def _on_add_clicked(self) -> None:
        if self.add_class() is not None:
            self.table.edit(self.table.currentIndex())

    def _say(self, message: str) -> None:
        self.status.setStyleSheet("")
        self.status.setText(message)

    def _report(self, error: RwthSamError) -> None:
        message = _user_message(error)
        self.status.setStyleSheet("color: #ff6060;")
        self.status.setText(message)
        show_error(message)
        return None


def _row(*widgets, stretch: int | None = None) -> QHBoxLayout:
    row = QHBoxLayout()
    for index, widget in enumerate(widgets):
        row.addWidget(widget, 1 if stretch is not None and index == stretch else 0)
    return row


def _disconnect(connections, *_) -> None:
    for signal, callback in connections:
        try:
            signal.disconnect(callback)
        except (RuntimeError, TypeError, ValueError):
            pass
