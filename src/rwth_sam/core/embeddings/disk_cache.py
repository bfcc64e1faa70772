"""The disk cache is content addressed instead: its key hashes the preprocessed RGB slice the encoder
sees with the model's identity, so a change of data, window or model gives another key by itself,
across sessions, and there is nothing to invalidate.
"""

from __future__ import annotations

import hashlib
import os
import threading
import warnings
from pathlib import Path

import numpy as np
import torch

from rwth_sam.core.errors import RwthSamError
from rwth_sam.core.models.predictors.base import Embedding

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
