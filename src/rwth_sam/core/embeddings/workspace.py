"""The loaded model and the current image's segmenter, rebuilt only when what they depend on changes.

Keys include everything a result depends on (model, checkpoint, device; image array, window, colour),
so switching any of them can never reuse a stale embedding or mask.

One memory ``EmbeddingCache`` is shared by every segmenter the workspace makes: going back to an
image, or to a window (contrast limits, CT preset) used before, finds its embeddings again. The
cache's keys name the model instance, the image array, the window and the slice (see ``cache``).
Loading another model empties it (the old model's embeddings can never be used again). When an
image's data is edited in place, call ``invalidate_image``. An optional disk cache
(``disk_cache=``, a ``DiskEmbeddingCache`` or a folder) keeps embeddings across sessions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from rwth_sam.core.embeddings.cache import DEFAULT_CACHE_BYTES, EmbeddingCache
from rwth_sam.core.embeddings.disk_cache import DiskEmbeddingCache
from rwth_sam.core.embeddings.identity import image_token, renew_image_token
from rwth_sam.core.embeddings.segmenter import Segmenter
from rwth_sam.core.models.loading import load_model
from rwth_sam.core.models.predictors.base import Predictor
from rwth_sam.core.models.registry import get_model_spec
from rwth_sam.core.preprocessing import resolve_window


def model_identity(name: str, checkpoint: str | os.PathLike | None) -> str:
    """What tells a model's weights apart across sessions, for the disk cache's keys.

    Official weights: the name and the checkpoint's SHA-256. A local checkpoint: its path, size and
    modification time (hashing gigabytes on every load would cost seconds; replacing the file
    changes its time).
    """
    if checkpoint:
        path = Path(checkpoint).expanduser().resolve()
        stat = path.stat()
        return f"{name}|checkpoint:{path}|{stat.st_size}|{stat.st_mtime_ns}"
    weights = get_model_spec(name).weights
    return f"{name}|sha256:{weights.sha256}" if weights is not None else name


class Workspace:
    def __init__(
        self,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        disk_cache: DiskEmbeddingCache | str | os.PathLike | None = None,
    ):
        self.cache = EmbeddingCache(cache_bytes)
        if disk_cache is not None and not isinstance(disk_cache, DiskEmbeddingCache):
            disk_cache = DiskEmbeddingCache(disk_cache)
        self.disk_cache = disk_cache
        self._predictor: Predictor | None = None
        self._predictor_key = None
        self._model_id: str | None = None
        self._segmenter: Segmenter | None = None
        self._segmenter_key = None

    def predictor(
        self, name: str, checkpoint: str | os.PathLike | None, device: str | None, progressbar: Any = False
    ) -> Predictor:
        key = (name, str(checkpoint) if checkpoint else None, device)
        if key != self._predictor_key:
            self.reset()
            self._predictor = load_model(name, checkpoint=checkpoint, device=device, progressbar=progressbar)
            self._predictor_key = key
            self._model_id = model_identity(name, checkpoint) if self.disk_cache is not None else None
        return self._predictor

    @property
    def loaded(self) -> Predictor | None:
        return self._predictor

    def segmenter(
        self, predictor: Predictor, image: np.ndarray, rgb: bool, window_choice: str, contrast_limits=None
    ) -> Segmenter:
        """The segmenter for this image and window choice (see ``preprocessing.WINDOW_CHOICES``)."""
        key = (id(predictor), id(image), image.shape, image.dtype, rgb, window_choice, tuple(contrast_limits or ()))
        if key != self._segmenter_key:
            window = resolve_window(window_choice, image, contrast_limits, rgb)
            model_id = self._model_id if predictor is self._predictor else None
            self._segmenter = Segmenter(
                predictor, image, window=window, rgb=rgb,
                cache=self.cache, disk_cache=self.disk_cache, model_id=model_id,
            )  # fmt: skip
            self._segmenter_key = key
        return self._segmenter

    def invalidate_image(self, image) -> int:
        """``image``'s data was edited in place: forget its embeddings; returns how many were dropped.

        Cheap (no encoder, no pass over the data): the image gets a new identity, so embeddings of
        the old data, even those still being computed, are never found again. The segmenter built on
        it is dropped too (a percentile window depends on the data). The disk cache needs nothing:
        its keys hash the slice's content.
        """
        old = image_token(image)
        renew_image_token(image)
        if self._segmenter is not None and self._segmenter.image is image:
            self._segmenter = self._segmenter_key = None
        return self.cache.drop_image(old)

    def reset(self) -> None:
        """Forget the model and the segmenter, and empty the memory cache (the disk cache stays)."""
        self._predictor = self._predictor_key = self._segmenter = self._segmenter_key = None
        self._model_id = None
        self.cache.clear()
