"""Memory keys (``SliceKey``) name everything an embedding depends on: the model, the image, the
intensity window, the colour flag and the slice (sliced axis, index, row and column axes). Changing
any of them (another model, another image, new contrast limits) gives another key, so a stale
embedding can never be found; old entries simply age out.

Identity of models and images: a *token*, a serial number given to each predictor and image array
object the first time it is seen, never reused in this process. ``id()`` alone is not enough: once
an array is freed, a new array (a freshly opened file of the same shape and dtype) can get the same
``id`` and would find the old array's embeddings. Tokens are held by weak references; when an array
or predictor is freed its token retires and the memory caches drop its entries at their next use.
Hashing the image's content would also catch edits made in place, but costs a pass over every
slice on each lookup (windowing plus hashing, tens of milliseconds for a large slice, on every
click); instead, whoever edits an image's data in place calls ``renew_image_token(image)``
(``Workspace.invalidate_image``), which retires its token: its embeddings are dropped and any
embedding still being computed from the old data lands under the retired token, where it is
thrown away, never shown.

What a session (the click prompts, the 3D session) is about is a ``SessionIdentity`` of the same
tokens: the image layer, its data, the model and the intensity window.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from rwth_sam.core.coordinates import SlicePlane
from rwth_sam.core.preprocessing import CONTRAST_LIMITS, IntensityWindow


class _Tokens:
    """Serial numbers for objects, never reused in this process (unlike ``id()``)."""

    def __init__(self):
        self._lock = threading.RLock()  # re-entrant: a weakref callback may run inside token()
        self._serial = itertools.count(1)
        self._by_id: dict[int, tuple[Callable[[], object], int]] = {}
        self.retired: set[int] = set()
        self.generation = 0  # bumped whenever a token retires

    def token(self, obj: object) -> int:
        with self._lock:
            entry = self._by_id.get(id(obj))
            if entry is not None and entry[0]() is obj:
                return entry[1]
            return self._assign(obj)

    def renew(self, obj: object) -> int:
        """Retire ``obj``'s token (if it has one) and give it a new one."""
        with self._lock:
            entry = self._by_id.get(id(obj))
            if entry is not None and entry[0]() is obj:
                self._retire(entry[1])
            return self._assign(obj)

    def _assign(self, obj: object) -> int:
        token = next(self._serial)
        oid = id(obj)
        try:
            ref = weakref.ref(obj, lambda _ref, oid=oid, token=token: self._died(oid, token))
        except TypeError:  # no weak references: keep the object alive rather than risk id() reuse
            ref = lambda obj=obj: obj  # noqa: E731
        self._by_id[oid] = (ref, token)
        return token

    def _died(self, oid: int, token: int) -> None:
        with self._lock:
            entry = self._by_id.get(oid)
            if entry is not None and entry[1] == token:
                del self._by_id[oid]
            self._retire(token)

    def _retire(self, token: int) -> None:
        self.retired.add(token)
        self.generation += 1


_TOKENS = _Tokens()


def image_token(image: object) -> int:
    """This image array's identity for the memory caches (see the module docstring)."""
    return _TOKENS.token(image)


def renew_image_token(image: object) -> int:
    """Call after editing ``image``'s data in place: its cached embeddings become unreachable and
    are dropped. Returns the new token."""
    return _TOKENS.renew(image)


def retirements() -> int:
    """How many tokens have retired so far: a cache holding keys purges them when this changes."""
    return _TOKENS.generation


def model_token(predictor: object) -> int:
    """This predictor's identity: two loads of the same model name (e.g. another checkpoint) differ."""
    return _TOKENS.token(predictor)


def object_token(obj: object) -> int:
    """Any object's identity (an image layer's), by the same serial numbers."""
    return _TOKENS.token(obj)


IMAGE, DATA, MODEL, WINDOW = "image", "data", "model", "window"  # what a SessionIdentity says changed


@dataclass(frozen=True)
class SessionIdentity:
    """What a session's prompts, masks and logits are about: the image (its layer and its data
    array, as tokens), the model (the user's choice and which load of it: a reload is another
    model) and the intensity window as chosen (the contrast limits only where that window reads
    them). The GUI builds it whenever one of them changes and binds the sessions to it; a job
    carries the identity it was started under, and its result is dropped under another one."""

    image: int | None  # object_token of the image layer (None: no image)
    data: int | None  # image_token of its data array
    model: tuple
    window: tuple

    @classmethod
    def of(cls, layer, data, model: tuple, window_choice: str, contrast_limits) -> SessionIdentity:
        limits = (
            tuple(map(float, contrast_limits))
            if window_choice == CONTRAST_LIMITS and contrast_limits is not None
            else None
        )
        return cls(
            None if layer is None else object_token(layer), None if data is None else image_token(data), tuple(model),
            (window_choice, limits),
        )  # fmt: skip

    def change_from(self, previous: SessionIdentity | None) -> str | None:
        """What changed since ``previous`` (none yet counts as another image): ``IMAGE``, ``DATA``,
        ``MODEL`` or ``WINDOW``, the first of them that differs, or None."""
        if previous is None or self.image != previous.image:
            return IMAGE
        for part in (DATA, MODEL, WINDOW):
            if getattr(self, part) != getattr(previous, part):
                return part
        return None


class SliceKey(NamedTuple):
    """Everything an embedding in memory depends on."""

    model: str  # the model's name (for reading; model_token decides)
    model_token: int
    image: int  # image_token of the array
    window: IntensityWindow | None
    rgb: bool
    axis: int | None
    index: int | None
    row_axis: int
    col_axis: int
    region: tuple[int, int, int, int] | None = None  # a region at native resolution: embedded on its own

    @classmethod
    def of(cls, predictor, image, window: IntensityWindow | None, rgb: bool, plane: SlicePlane) -> SliceKey:
        return cls(
            predictor.name, model_token(predictor), image_token(image), window, bool(rgb),
            plane.axis, plane.index, plane.row_axis, plane.col_axis, plane.region,
        )  # fmt: skip

    @property
    def retired(self) -> bool:
        return self.image in _TOKENS.retired or self.model_token in _TOKENS.retired
