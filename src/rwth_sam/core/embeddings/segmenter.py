"""Segment slices of one image array with one model: the Python API the napari widget is built on."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from rwth_sam.core.coordinates import SlicePlane
from rwth_sam.core.embeddings.cache import DEFAULT_CACHE_BYTES, EmbeddingCache
from rwth_sam.core.embeddings.disk_cache import DiskEmbeddingCache
from rwth_sam.core.embeddings.identity import SliceKey
from rwth_sam.core.errors import InputError
from rwth_sam.core.models.predictors.base import Embedding, Prediction, Predictor, Prompts
from rwth_sam.core.preprocessing import IntensityWindow, check_dtype, to_rgb

__all__ = ["DEFAULT_CACHE_BYTES", "DiskEmbeddingCache", "EmbeddingCache", "Segmenter", "SliceKey", "spatial_shape"]


def spatial_shape(image: np.ndarray, rgb: bool) -> tuple[int, ...]:
    """The image's spatial shape, refusing what rwth-sam cannot segment: a dtype without intensities
    (complex, text, objects), 4D or 1D data, an empty image, and one with no slice of 2x2 pixels.

    A stack of one slice, (1, H, W), is a volume like any other (napari shows its H x W slice).
    """
    if not (hasattr(image, "shape") and hasattr(image, "dtype")):
        raise InputError(f"An image is an array (numpy, dask, zarr), not a {type(image).__name__}: use np.asarray.")
    check_dtype(image.dtype)
    if rgb and (len(image.shape) < 3 or image.shape[-1] not in (3, 4)):
        raise InputError(
            f"A colour image has 3 or 4 channels along its last axis; this one has shape {tuple(image.shape)}."
        )
    shape = tuple(int(s) for s in (image.shape[:-1] if rgb else image.shape))
    if len(shape) not in (2, 3):
        kind = "colour " if rgb else ""
        raise InputError(
            f"rwth-sam segments 2D images and 3D volumes; this {kind}image has {len(shape)} spatial "
            f"dimensions {shape}. Select one time point or channel first."
        )
    if min(shape) == 0:
        raise InputError(f"The image of shape {shape} is empty.")
    if sorted(shape)[-2] < 2:
        raise InputError(f"The image of shape {shape} is too small to segment: no slice of it is 2x2 pixels or more.")
    return shape


class Segmenter:
    """Embeds slices of ``image`` on demand (cached) and predicts masks from prompts on them.

    ``window`` maps intensities to 8-bit (see ``preprocessing``); by default uint8 data is used as
    it is and anything else is clipped at its 0.5 and 99.5 percentiles, over the whole volume.

    ``cache`` (an ``EmbeddingCache``) may be shared by several segmenters, as a ``Workspace`` does:
    its keys name the model, the image, the window and the slice. ``disk_cache`` (a
    ``DiskEmbeddingCache`` or a folder for one) keeps embeddings across sessions, keyed by the
    slice's content and ``model_id``; give ``model_id`` (default: the model's name) something that
    tells weights apart when the same model name can carry other weights (a local checkpoint).
    """

    def __init__(
        self,
        predictor: Predictor,
        image: np.ndarray,
        window: IntensityWindow | None = None,
        rgb: bool = False,
        cache: EmbeddingCache | None = None,
        disk_cache: DiskEmbeddingCache | str | os.PathLike | None = None,
        model_id: str | None = None,
    ):
        self.predictor = predictor
        self.image = image
        self.rgb = rgb
        self.shape = spatial_shape(image, rgb)
        if window is None and image.dtype != np.uint8:
            window = IntensityWindow.percentiles(image)
        self.window = window
        self.cache = cache if cache is not None else EmbeddingCache()
        if disk_cache is not None and not isinstance(disk_cache, DiskEmbeddingCache):
            disk_cache = DiskEmbeddingCache(disk_cache)
        self.disk_cache = disk_cache
        self.model_id = model_id or predictor.name

    def plane(self, axis: int | None = None, index: int | None = None) -> SlicePlane:
        if len(self.shape) == 3 and axis is None:
            axis = 0
        return self.check_plane(SlicePlane.of(self.shape, axis, index))

    def check_plane(self, plane: SlicePlane) -> SlicePlane:
        """``plane`` if it is a slice of this image that can be segmented (at least 2x2 pixels).

        A volume may be viewed along an axis of length 1 (a single-slice stack shown side on): its
        slices are a pixel thin, and the encoder cannot take them.
        """
        if tuple(plane.shape) != tuple(self.shape):
            raise InputError(f"The slice belongs to an image of shape {plane.shape}, not {self.shape}.")
        height, width = plane.size
        if min(height, width) < 2:
            raise InputError(
                f"The slice shown (slice {plane.index} along axis {plane.axis}) is {height}x{width} pixels: "
                "too small to segment. View the volume along another axis."
            )
        return plane

    def slice_rgb(self, plane: SlicePlane) -> np.ndarray:
        """The slice as the model sees it: (H, W, 3) uint8."""
        self.check_plane(plane)
        return to_rgb(np.asarray(plane.take(self.image)), self.window, rgb=self.rgb)

    def key(self, plane: SlicePlane) -> SliceKey:
        """The memory cache's key of ``plane``'s embedding (model, image, window, colour, slice)."""
        return SliceKey.of(self.predictor, self.image, self.window, self.rgb, plane)

    _key = key

    def disk_key(self, plane: SlicePlane) -> str:
        """The disk cache's key: a hash of the slice as the model sees it, of ``model_id`` and of the
        predictor's ``features_format``."""
        return self._disk_key(self.slice_rgb(plane))

    def _disk_key(self, rgb: np.ndarray) -> str:
        return DiskEmbeddingCache.key(rgb, f"{self.model_id}|{self.predictor.features_format}")

    def is_embedded(self, plane: SlicePlane) -> bool:
        """Whether ``plane``'s embedding is in the memory cache."""
        return self.key(plane) in self.cache

    def embed(self, plane: SlicePlane) -> Embedding:
        """``plane``'s embedding: from memory, else from the disk cache, else from the encoder."""
        key = self.key(plane)
        embedding = self.cache.get(key)
        if embedding is None:
            embedding = self._load_or_encode(plane)
            self.cache.put(key, embedding)
        return embedding

    def _load_or_encode(self, plane: SlicePlane) -> Embedding:
        rgb = self.slice_rgb(plane)
        if self.disk_cache is None:
            return self.predictor.embed(rgb)
        disk_key = self._disk_key(rgb)
        embedding = self.disk_cache.get(disk_key, device=self.predictor.device)
        if embedding is None or embedding.model_name != self.predictor.name:
            embedding = self.predictor.embed(rgb)
            try:
                self.disk_cache.put(disk_key, embedding)
            except Exception as error:  # a full or read-only disk must not stop segmenting
                warnings.warn(f"Could not store the embedding in {self.disk_cache.path}: {error}", stacklevel=2)
        return embedding

    def _neighbourhood(self, plane: SlicePlane, radius: int, within: tuple[int, int] | None = None) -> list[SlicePlane]:
        """``plane``, then its neighbours at distance 1, 2, ... radius (+1, -1, +2, -2 ...) in the
        volume, or only those in the slice range ``within`` (first, last)."""
        planes = [self.check_plane(plane)]
        if plane.axis is not None:
            first, last = within if within is not None else (0, self.shape[plane.axis] - 1)
            first, last = max(first, 0), min(last, self.shape[plane.axis] - 1)
            for distance in range(1, max(0, int(radius)) + 1):
                for index in (plane.index + distance, plane.index - distance):
                    if first <= index <= last:
                        planes.append(replace(plane, index=index))
        return planes

    def prefetch_order(self, plane: SlicePlane, radius: int, within: tuple[int, int] | None = None) -> list[SlicePlane]:
        """The slices ``prefetch`` would embed, in order: ``plane`` first, then its neighbours at
        distance 1, 2, ... ``radius`` (+1, -1, +2, -2 ...) within the volume (or the slice range
        ``within``), skipping cached ones."""
        return [p for p in self._neighbourhood(plane, radius, within) if not self.is_embedded(p)]

    def prefetch(
        self,
        plane: SlicePlane,
        radius: int = 2,
        should_stop: Callable[[], bool] | None = None,
        within: tuple[int, int] | None = None,
    ) -> list[SlicePlane]:
        """Embed the shown ``plane``, then its neighbours (see ``prefetch_order``); returns those embedded.

        ``should_stop()`` is asked before each slice (a worker cancelled when the user moves on).
        The shown slice and its nearer neighbours are never evicted for farther ones: prefetching
        stops when the next neighbour would not fit in the cache's budget beside them.
        """
        cache = self.cache
        shown = self.key(plane)
        cache.pin(shown)  # pinned before it is embedded: it may displace anything, nothing displaces it
        kept: list[SliceKey] = [shown]
        embedded: list[SlicePlane] = []
        size = 0
        try:
            neighbourhood = self._neighbourhood(plane, radius, within)
            for candidate in reversed(neighbourhood):  # evict the neighbourhood last, the nearest slices last of all
                cache.touch(self.key(candidate))
            for candidate in neighbourhood:
                key = self.key(candidate)
                if key not in cache:
                    if should_stop is not None and should_stop():
                        break
                    if key != shown and size and not cache.fits(size, kept):
                        break  # the budget is full of nearer slices
                    size = max(size, self.embed(candidate).nbytes)
                    embedded.append(candidate)
                if key != shown:
                    cache.pin(key)  # only once it is in: a neighbour is never put while pinned
                    kept.append(key)
                size = max(size, cache.entry_nbytes(key))
        finally:
            for key in reversed(kept):  # the shown slice ends most recently used, the farthest least
                cache.touch(key)
            for key in kept:
                cache.unpin(key)
        return embedded

    def predict(
        self,
        plane: SlicePlane,
        points=None,
        labels=None,
        box=None,
        mask_logits=None,
        multimask: bool | None = None,
        all_masks: bool = False,
    ) -> Prediction:
        """Masks on ``plane`` for points (x, y) with labels (1/0), a box (x0, y0, x1, y1) and/or logits."""
        self.check_plane(plane)
        prompts = Prompts.make(points, labels, box, mask_logits)
        height, width = plane.size
        for x, y in prompts.points:
            if not plane.contains(x, y):
                raise InputError(f"The point ({x:.1f}, {y:.1f}) is outside the {width}x{height} slice.")
        if prompts.box is not None:
            x0, y0, x1, y1 = prompts.box
            if x1 < -0.5 or y1 < -0.5 or x0 >= width - 0.5 or y0 >= height - 0.5:
                raise InputError(
                    f"The box ({x0:.1f}, {y0:.1f}, {x1:.1f}, {y1:.1f}) lies outside the {width}x{height} slice."
                )
        self.predictor.check_prompts(prompts)  # before the encoder runs: bad input costs nothing
        return self.predictor.predict(self.embed(plane), prompts, multimask=multimask, all_masks=all_masks)
