"""The top of the dock, outside its scrolling part: what the plugin is doing now, and the messages that
matter after the fact (errors, what a run wrote, where labels went) kept until the user dismisses them.

A status line alone was overwritten by the next click, and below a tall dock it was off the screen.
"""

from __future__ import annotations

from magicgui.widgets import Container, Label, PushButton
from qtpy.QtWidgets import QSizePolicy

from rwth_sam.ui.layout import VerticalScrollArea

ERROR_STYLE = "color: #ff8080;"
KEPT_AREA_HEIGHT = 140  # px: about five kept messages show, more scroll (the controls keep the rest)


class Messages(Container):
    """``say`` sets the status line; ``keep`` also adds a message that stays (newest first) until its ×
    or *Dismiss all*; an error is kept in red. The status line hides while it says what the newest kept
    message says."""

    def __init__(self, status: str = ""):
        super().__init__(labels=False)
        self.margins = (0, 0, 0, 0)
        self.native.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)
        self.status = _wrapped(status)
        self._kept = Container(labels=False)
        self._kept.margins = (0, 0, 0, 0)
        self._kept_area = VerticalScrollArea(self._kept.native, max_height=KEPT_AREA_HEIGHT)
        self._kept_area.setVisible(False)
        self.dismiss_all = PushButton(text="Dismiss all", visible=False)
        self.dismiss_all.changed.connect(self.clear)
        self.extend([self.status, self.dismiss_all])
        self.native.layout().insertWidget(1, self._kept_area)

    @property
    def rows(self) -> list[Container]:
        """The kept messages' rows (text, ×), newest first."""
        return list(self._kept)

    @property
    def kept(self) -> list[str]:
        """The kept messages' texts, newest first."""
        return [row[0].value for row in self._kept]

    def say(self, message: str) -> None:
        self.status.value = message
        self._show_kept()

    def keep(self, message: str, error: bool = False) -> None:
        """Say ``message`` and keep it; the same message again moves to the top instead of repeating."""
        self.say(message)
        for row in list(self._kept):
            if row[0].value == message:
                self._kept.remove(row)
        text = _wrapped(message)
        if error:
            text.native.setStyleSheet(ERROR_STYLE)
        dismiss = PushButton(text="×", tooltip="Dismiss this message")
        dismiss.native.setFixedWidth(dismiss.native.fontMetrics().horizontalAdvance("×") + 16)
        row = Container(layout="horizontal", labels=False, widgets=[text, dismiss])
        row.margins = (0, 0, 0, 0)
        dismiss.changed.connect(lambda *_: self._dismiss(row))
        self._kept.insert(0, row)
        self._show_kept()

    def clear(self, *_) -> None:
        """Dismiss every kept message."""
        self._kept.clear()
        self._show_kept()

    def _dismiss(self, row: Container) -> None:
        if row in self._kept:
            self._kept.remove(row)
        self._show_kept()

    def _show_kept(self) -> None:
        self._kept_area.setVisible(len(self._kept) > 0)
        # said and kept: shown once, in the kept row
        self.status.visible = not (len(self._kept) and self._kept[0][0].value == self.status.value)
        self.dismiss_all.visible = len(self._kept) > 1


def _wrapped(text: str) -> Label:
    """A message that wraps to the dock's width and never widens it."""
    label = Label(value=text)
    label.native.setWordWrap(True)
    label.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    return label
