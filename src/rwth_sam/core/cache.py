"""Slice embeddings kept for reuse: in memory (least recently used first out, within a byte budget)
and, optionally, on disk in a zarr store that outlives the session.

Memory keys (``SliceKey``) name everything an embedding depends on: the model, the image, the
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

The disk cache is content addressed instead: its key hashes the preprocessed RGB slice the encoder
sees with the model's identity, so a change of data, window or model gives another key by itself,
across sessions, and there is nothing to invalidate.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
import warnings
import weakref
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from .coordinates import SlicePlane
from .errors import RwthSamError
from .predictors.base import Embedding
from .preprocessing import IntensityWindow

DEFAULT_CACHE_BYTES = 2 * 1024**3


# --------------------------------------------------------------------------- identity tokens
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


def model_token(predictor: object) -> int:
    """This predictor's identity: two loads of the same model name (e.g. another checkpoint) differ."""
    return _TOKENS.token(predictor)


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

    @classmethod
    def of(cls, predictor, image, window: IntensityWindow | None, rgb: bool, plane: SlicePlane) -> SliceKey:
        return cls(
            predictor.name, model_token(predictor), image_token(image), window, bool(rgb),
            plane.axis, plane.index, plane.row_axis, plane.col_axis,
        )  # fmt: skip

    @property
    def retired(self) -> bool:
        return self.image in _TOKENS.retired or self.model_token in _TOKENS.retired


# --------------------------------------------------------------------------- memory
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
        self._generation = _TOKENS.generation

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
        if self._generation == _TOKENS.generation:
            return
        self._generation = _TOKENS.generation
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


# --------------------------------------------------------------------------- disk
_FORMAT = 1


def default_disk_cache_dir() -> Path:
    """Where the widget keeps embeddings across sessions: the platform's user cache folder."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("rwth-sam")) / "embeddings"


class DiskEmbeddingCache:
    """Embeddings in a zarr store at ``path``, kept across sessions (zarr 2.16+ and 3 both work).

    One group per embedding, named by ``key(rgb, model_id)``: a hash of the RGB slice the encoder
    saw and the model's identity. Each tensor of the features is an array, bit for bit (any dtype,
    bfloat16 included) and loaded back with its memory layout; the features' structure (dicts,
    lists, tuples, numbers) is in the group's attributes, written last, so an entry that a crashed
    session left half written is never read. Entries are loaded onto the device asked for. The
    store has no size limit: ``clear()`` it.
    """

    def __init__(self, path: str | os.PathLike):
        try:
            import zarr
        except ImportError as error:  # pragma: no cover - zarr is a dependency
            raise RwthSamError("The disk cache needs zarr: pip install 'zarr>=2.16'.") from error
        self.path = Path(path)
        self._zarr = zarr
        self._root = zarr.open_group(str(self.path), mode="a")
        self._lock = threading.Lock()

    @staticmethod
    def key(rgb: np.ndarray, model_id: str) -> str:
        """The content key of an (H, W, 3) uint8 slice as ``model_id`` embeds it."""
        rgb = np.ascontiguousarray(rgb)
        digest = hashlib.blake2b(digest_size=20)
        digest.update(f"rwth-sam embedding v{_FORMAT}\0{model_id}\0{rgb.shape}\0{rgb.dtype}\0".encode())
        digest.update(memoryview(rgb).cast("B"))
        return digest.hexdigest()

    def _complete_group(self, key: str):
        try:
            group = self._root[key]
        except KeyError:
            return None
        return group if dict(group.attrs).get("complete") else None

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return self._complete_group(key) is not None

    def get(self, key: str, device: torch.device | str | None = None) -> Embedding | None:
        with self._lock:
            group = self._complete_group(key)
            if group is None:
                return None
            try:
                attrs = dict(group.attrs)
                tensors = [
                    _from_numpy(np.asarray(group[f"t{i}"][...]), dtype, strides)
                    for i, (dtype, strides) in enumerate(zip(attrs["dtypes"], attrs["strides"]))
                ]
                features = _decode(attrs["structure"], tensors)
                embedding = Embedding(features, tuple(attrs["image_size"]), attrs["model_name"])
            except Exception as error:  # a damaged entry is a miss, never a crash
                warnings.warn(f"Ignoring the unreadable cached embedding {key} in {self.path}: {error}", stacklevel=2)
                return None
        return embedding if device is None else embedding.to(torch.device(device))

    def put(self, key: str, embedding: Embedding) -> None:
        with self._lock:
            if self._complete_group(key) is not None:
                return  # content addressed: the same key holds the same embedding
            tensors: list[torch.Tensor] = []
            structure = _encode(embedding.features, tensors)
            group = self._root.create_group(key, overwrite=True)
            dtypes, strides = [], []
            for i, tensor in enumerate(tensors):
                array, dtype = _to_numpy(tensor)
                _write_array(group, f"t{i}", array)
                dtypes.append(dtype)
                strides.append(list(tensor.stride()))
            group.attrs.update(
                {
                    "format": _FORMAT,
                    "structure": structure,
                    "dtypes": dtypes,
                    "strides": strides,
                    "image_size": [int(s) for s in embedding.image_size],
                    "model_name": embedding.model_name,
                    "complete": True,
                }
            )

    def discard(self, key: str) -> None:
        with self._lock:
            if key in self._keys():
                del self._root[key]

    def _keys(self) -> list[str]:
        return list(self._root.group_keys())

    def __len__(self) -> int:
        with self._lock:
            return sum(self._complete_group(k) is not None for k in self._keys())

    def clear(self) -> None:
        with self._lock:
            for key in self._keys():
                del self._root[key]


def _write_array(group, name: str, array: np.ndarray) -> None:
    chunks = tuple(max(1, s) for s in array.shape)
    if hasattr(group, "create_array"):  # zarr 3
        target = group.create_array(name, shape=array.shape, dtype=array.dtype, chunks=chunks)
    else:  # zarr 2
        target = group.create_dataset(name, shape=array.shape, dtype=array.dtype, chunks=chunks)
    target[...] = array


def _encode(obj, tensors: list) -> dict:
    """A JSON description of the features; their tensors are appended to ``tensors``."""
    if isinstance(obj, torch.Tensor):
        tensors.append(obj)
        return {"tensor": len(tensors) - 1}
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise TypeError("Only features with string keys can be stored on disk.")
        return {"dict": {k: _encode(v, tensors) for k, v in obj.items()}}
    if isinstance(obj, (list, tuple)):
        return {"tuple" if isinstance(obj, tuple) else "list": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, np.generic):
        obj = obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return {"value": obj}
    raise TypeError(f"Cannot store a {type(obj).__name__} of embedding features on disk.")


def _decode(structure: dict, tensors: list):
    ((kind, value),) = structure.items()
    if kind == "tensor":
        return tensors[value]
    if kind == "dict":
        return {k: _decode(v, tensors) for k, v in value.items()}
    if kind == "list":
        return [_decode(v, tensors) for v in value]
    if kind == "tuple":
        return tuple(_decode(v, tensors) for v in value)
    if kind == "value":
        return value
    raise ValueError(f"unknown feature node {kind!r}")


_SAME_SIZE_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _to_numpy(tensor: torch.Tensor) -> tuple[np.ndarray, str]:
    """The tensor's bits as a numpy array, and its torch dtype's name (bfloat16 travels as int16)."""
    tensor = tensor.detach().to("cpu").contiguous()
    dtype = str(tensor.dtype).removeprefix("torch.")
    try:
        return tensor.numpy(), dtype
    except TypeError:  # no numpy dtype (bfloat16, float8): keep the bits
        return tensor.view(_SAME_SIZE_INT[tensor.element_size()]).numpy(), dtype


def _from_numpy(array: np.ndarray, dtype: str, strides: list[int]) -> torch.Tensor:
    """The tensor back, with its dtype and its memory layout (kernels, and so the decoder's last
    bits, depend on the layout: SAM 2's features are channels-last)."""
    array = array if array.flags.c_contiguous and array.flags.writeable else array.copy(order="C")
    tensor = torch.from_numpy(array)
    target = getattr(torch, dtype)
    tensor = tensor if tensor.dtype == target else tensor.view(target)
    if tuple(strides) == tensor.stride():
        return tensor
    try:
        laid_out = torch.empty_strided(tensor.shape, tuple(strides), dtype=tensor.dtype)
        return laid_out.copy_(tensor)
    except RuntimeError:  # an overlapping layout (expanded tensor): the values are what matter
        return tensor
