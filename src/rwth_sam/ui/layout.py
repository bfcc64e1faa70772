"""How the dock's controls are laid out so that they fit a laptop screen (1366×768) beside napari's canvas:
rows of buttons side by side, option groups that collapse, and nothing that widens the dock."""

from __future__ import annotations

from magicgui.widgets import Container, Label, Widget
from qtpy.QtCore import QEvent, QSize, Qt
from qtpy.QtWidgets import QComboBox, QFrame, QScrollArea, QSizePolicy, QWidget
from superqt import QCollapsible


def side_by_side(*widgets: Widget) -> Container:
    """Widgets in one row, as wide together as the rows above and below."""
    row = Container(layout="horizontal", labels=False, widgets=list(widgets))
    row.margins = (0, 0, 0, 0)
    return row


class VerticalScrollArea(QScrollArea):
    """Its content scrolled up and down: as wide as the content needs (so the dock is), and only as tall as
    there is room, so a tall panel never makes napari's window taller than the screen.

    (magicgui's ``scrollable`` containers cannot be nested in a container: it lays out the inner widget
    and leaves the scroll area as a stray window.)
    """

    def __init__(self, content: QWidget, max_height: int | None = None):
        super().__init__()
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setWidget(content)
        if max_height is not None:  # as tall as the content, up to max_height
            self.setMaximumHeight(max_height)
            self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)
        content.installEventFilter(self)

    def _content_width(self) -> int:
        return self.widget().minimumSizeHint().width() + self.verticalScrollBar().sizeHint().width()

    def minimumSizeHint(self) -> QSize:
        return QSize(self._content_width(), super().minimumSizeHint().height())

    def sizeHint(self) -> QSize:
        content = self.widget()
        width = self.viewport().width()
        # wrapped text is as tall as the width it is given makes it, not as its own size hint guesses
        height = content.heightForWidth(width) if content.hasHeightForWidth() else -1
        return QSize(self._content_width(), height if height > 0 else content.sizeHint().height())

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        if event.size().width() != event.oldSize().width():
            self.updateGeometry()

    def eventFilter(self, watched, event) -> bool:
        if watched is self.widget() and event.type() == QEvent.Type.LayoutRequest:
            self.updateGeometry()  # the content changed (a mode's panel shown): the dock's width follows
        return super().eventFilter(watched, event)


def collapsible(title: str, widgets: list[Widget]) -> QCollapsible:
    """A group of labelled controls under a title the user clicks to show them, collapsed at first."""
    group = QCollapsible(title)
    group.addWidget(Container(labels=True, widgets=widgets).native)
    group.collapse(animate=False)
    return group


def compact_layout(container: Container) -> None:
    """Long names and messages must not widen the dock and squeeze napari's canvas.

    Messages wrap instead, with room for three lines (magicgui's rows do not grow with wrapped text).
    """
    for combo in container.native.findChildren(QComboBox):
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(14)
    for widget in container:
        if isinstance(widget, Container):
            compact_layout(widget)
        elif isinstance(widget, Label):
            widget.native.setWordWrap(True)
            widget.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
            widget.native.setMinimumHeight(3 * widget.native.fontMetrics().lineSpacing())
