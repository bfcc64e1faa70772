"""Slice embeddings kept for reuse: in memory (least recently used first out, within a byte budget)
and, optionally, on disk in a zarr store that outlives the session. Keys: ``identity.SliceKey``.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from rwth_sam.core.embeddings.identity import SliceKey, retirements
from rwth_sam.core.models.predictors.base import Embedding

DEFAULT_CACHE_BYTES = 2 * 1024**3


class EmbeddingCache:
    """Slice embeddings within a byte budget, the least recently used evicted first.

    After ``put`` the cache holds at most ``max_bytes``, except when a single entry is larger than
    the budget on its own. Pinned keys (``pin``) are evicted only to make room for another pinned
    key: prefetching pins the shown slice, so its neighbours never push it out. Thread-safe.
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, Embedding] = OrderedDict()
        self._sizes: dict[Hashable, int] = {}
        self._nbytes = 0
        self._pins: Counter = Counter()
        self._lock = threading.RLock()
        self._generation = retirements()

    def get(self, key) -> Embedding | None:
        """The embedding (marked as just used), or None."""
        with self._lock:
            self._purge_retired()
            embedding = self._entries.get(key)
            if embedding is not None:
                self._entries.move_to_end(key)
            return embedding

    def peek(self, key) -> Embedding | None:
        """The embedding without marking it as used."""
        with self._lock:
            return self._entries.get(key)

    def put(self, key, embedding: Embedding) -> None:
        with self._lock:
            self._purge_retired()
            if isinstance(key, SliceKey) and key.retired:
                return  # computed from data that has changed meanwhile (or of a freed image)
            if key in self._entries:
                self._remove(key)
            self._entries[key] = embedding
            self._sizes[key] = embedding.nbytes
            self._nbytes += self._sizes[key]
            self._evict(key)

    def _evict(self, new_key) -> None:
        def over() -> bool:
            return self._nbytes > self.max_bytes and len(self._entries) > 1

        for key in list(self._entries):  # least recently used first
            if not over():
                return
            if key != new_key and not self._pins[key]:
                self._remove(key)
        if over() and not self._pins[new_key]:
            self._remove(new_key)  # it does not fit beside the pinned entries
            return
        for key in list(self._entries):  # a pinned newcomer displaces older pinned entries
            if not over():
                return
            if key != new_key:
                self._remove(key)

    def _remove(self, key) -> None:
        del self._entries[key]
        self._nbytes -= self._sizes.pop(key)

    def _purge_retired(self) -> None:
        if self._generation == retirements():
            return
        self._generation = retirements()
        for key in [k for k in self._entries if isinstance(k, SliceKey) and k.retired]:
            self._remove(key)

    def discard(self, predicate: Callable[[Any], bool]) -> int:
        """Drop the entries whose key matches; returns how many."""
        with self._lock:
            keys = [k for k in self._entries if predicate(k)]
            for key in keys:
                self._remove(key)
            return len(keys)

    def drop_image(self, token: int) -> int:
        """Drop every embedding of the image with this ``image_token``."""
        return self.discard(lambda k: isinstance(k, SliceKey) and k.image == token)

    def drop_model(self, token: int) -> int:
        """Drop every embedding made by the predictor with this ``model_token``."""
        return self.discard(lambda k: isinstance(k, SliceKey) and k.model_token == token)

    def touch(self, key) -> None:
        """Mark an entry as just used."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)

    def demote(self, key) -> None:
        """Mark an entry as the first to evict: a propagation that has passed the slice will not
        read it again, while slices it has yet to reach (embedded ahead) should stay."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key, last=False)

    def pin(self, key) -> None:
        """Protect ``key`` (present or to come) from eviction by unpinned entries; pins are counted."""
        with self._lock:
            self._pins[key] += 1

    def unpin(self, key) -> None:
        with self._lock:
            self._pins[key] -= 1
            if self._pins[key] <= 0:
                del self._pins[key]

    def entry_nbytes(self, key) -> int:
        with self._lock:
            return self._sizes.get(key, 0)

    def fits(self, nbytes: int, keep: Iterable = ()) -> bool:
        """Whether an entry of ``nbytes`` fits beside the entries ``keep`` within the budget."""
        with self._lock:
            return sum(self._sizes.get(k, 0) for k in set(keep)) + nbytes <= self.max_bytes

    def keys(self) -> list:
        """Keys, least recently used first."""
        with self._lock:
            return list(self._entries)

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._nbytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._sizes.clear()
            self._nbytes = 0
