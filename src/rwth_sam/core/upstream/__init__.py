"""The fence around the upstream packages' internals: one module per upstream package.

Everything in rwth-sam that reads or replaces a private upstream attribute, or overrides an upstream
method, lives here and nowhere else, so that an upstream release that changes one is found in one
place. Each module lists what it relies on in ``RELIES_ON`` (name: what for); ``tests/test_upstream.py``
checks every entry against the installed package and names the entry that changed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

__all__ = ["BatchHooks"]


class BatchHooks:
    """Mixin for an upstream automatic mask generator: hooks around each of its decoder batches.

    Every upstream generator decodes a crop's point grid in batches through ``_process_batch``; the
    subclasses in this package override it to call ``before`` (which may raise to abandon the run)
    and ``after`` around each batch while ``between_batches`` is active.
    """

    _before_batch: Callable[[], None] | None = None
    _after_batch: Callable[[], None] | None = None

    @contextlib.contextmanager
    def between_batches(self, before: Callable[[], None], after: Callable[[], None]) -> Iterator[None]:
        self._before_batch, self._after_batch = before, after
        try:
            yield
        finally:
            del self._before_batch, self._after_batch  # back to the class's None: nothing outlives the run

    def _process_batch(self, *args, **kwargs):
        if self._before_batch is not None:
            self._before_batch()
        batch = super()._process_batch(*args, **kwargs)
        if self._after_batch is not None:
            self._after_batch()
        return batch
