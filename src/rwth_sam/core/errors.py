"""Exceptions whose messages are shown to the user as they are."""

from __future__ import annotations


class RwthSamError(Exception):
    """Base class: anything the user can fix gets one of these, with a message that says how."""


class WeightsError(RwthSamError):
    """A checkpoint could not be downloaded, verified or read."""


class InputError(RwthSamError, ValueError):
    """An image, labels layer or prompt cannot be used as given."""


class UnexpectedError(RwthSamError):
    """A fault nobody anticipated (a bug, a driver, the disk), told in one short sentence: what failed,
    and that nothing was changed. The traceback goes to the log (see ``ui.reporting``)."""

    MAX_DETAIL = 160

    def __init__(self, what: str, error: BaseException):
        detail = f"{type(error).__name__}: {error}"
        if len(detail) > self.MAX_DETAIL:
            detail = detail[: self.MAX_DETAIL - 1] + "…"
        super().__init__(f"{what} failed ({detail}). Nothing was changed.")
        self.what = what
        self.error = error
