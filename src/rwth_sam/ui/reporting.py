"""How failures reach the user: a short message in the widget and a notification, never napari's
traceback dialog. Unexpected exceptions are logged with their traceback (stderr and a log file).

Every GUI-thread entry point of the plugin (buttons, mouse and key callbacks, worker results) runs
through ``guarded``, so an exception nobody anticipated becomes an ``UnexpectedError`` message
instead of escaping into Qt's event loop, where napari would show it as a traceback.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from logging.handlers import RotatingFileHandler
from pathlib import Path

import platformdirs
from napari.utils.notifications import show_error

from rwth_sam.core.errors import RwthSamError, UnexpectedError

LOG = logging.getLogger("rwth_sam")


def log_file() -> Path:
    return Path(platformdirs.user_log_dir("rwth-sam")) / "rwth-sam.log"


def _ensure_log_file() -> None:
    """The first unexpected error opens the log file (a user sends it with a bug report)."""
    if any(isinstance(handler, RotatingFileHandler) for handler in LOG.handlers):
        return
    path = log_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = RotatingFileHandler(path, maxBytes=2**20, backupCount=2, encoding="utf-8")
    except OSError:
        return  # a read-only home: stderr still has it
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    LOG.addHandler(handler)
    LOG.addHandler(logging.StreamHandler())


def as_user_error(error: BaseException, what: str) -> RwthSamError:
    """``error`` as the user is told it; an unexpected one is logged with its traceback first."""
    if isinstance(error, RwthSamError):
        return error
    _ensure_log_file()
    LOG.error("%s failed", what, exc_info=(type(error), error, error.__traceback__))
    return UnexpectedError(what, error)


def show_user_error(error: BaseException, what: str = "rwth-sam") -> RwthSamError:
    """Notify the user (napari's notification, no traceback); returns the error as told."""
    told = as_user_error(error, what)
    show_error(str(told))
    return told


def guarded(what: str, report: Callable[[RwthSamError], None] | None = None) -> Callable:
    """Decorate a GUI-thread handler: any exception becomes a short message, given to ``report``
    (default: a notification), and the handler returns None."""

    def decorate(handler: Callable) -> Callable:
        @functools.wraps(handler)
        def run(*args, **kwargs):
            try:
                return handler(*args, **kwargs)
            except Exception as error:  # noqa: BLE001  (the point: nothing escapes to Qt)
                told = as_user_error(error, what)
                (report or (lambda e: show_error(str(e))))(told)
                return None

        return run

    return decorate
