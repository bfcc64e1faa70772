"""Segment slices of one image array with one model: the Python API the napari widget is built on."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .coordinates import SlicePlane
from .errors import InputError
from .predictors.base import Embedding, Prediction, Predictor, Prompts
from .preprocessing import IntensityWindow, to_rgb

DEFAULT_CACHE_BYTES = 2 * 1024**3


class EmbeddingCache:
    """Least-recently-used slice embeddings within a byte budget."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[object, Embedding] = OrderedDict()

    def get(self, key) -> Embedding | None:
        embedding = self._entries.get(key)
        if embedding is not None:
            self._entries.move_to_end(key)
        return embedding

    def put(self, key, embedding: Embedding) -> None:
        self._entries[key] = embedding
        self._entries.move_to_end(key)
        while self.nbytes > self.max_bytes and len(self._entries) > 1:
            self._entries.popitem(last=False)

    def __contains__(self, key) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    def clear(self) -> None:
        self._entries.clear()


def spatial_shape(image: np.ndarray, rgb: bool) -> tuple[int, ...]:
    """The image's spatial shape, refusing what rwth-sam cannot segment (4D, 1D, empty)."""
    shape = tuple(image.shape[:-1] if rgb else image.shape)
    if len(shape) not in (2, 3):
        kind = "colour " if rgb else ""
        raise InputError(
            f"rwth-sam segments 2D images and 3D volumes; this {kind}image has {len(shape)} spatial "
            f"dimensions {shape}. Select one time point or channel first."
        )
    if min(shape) < 2:
        raise InputError(f"The image of shape {shape} is too small to segment.")
    return shape


class Segmenter:
    """Embeds slices of ``image`` on demand (cached) and predicts masks from prompts on them.

    ``window`` maps intensities to 8-bit (see ``preprocessing``); by default uint8 data is used as
    it is and anything else is clipped at its 0.5 and 99.5 percentiles, over the whole volume.
    """

    def __init__(
        self,
        predictor: Predictor,
        image: np.ndarray,
        window: IntensityWindow | None = None,
        rgb: bool = False,
        cache: EmbeddingCache | None = None,
    ):
        self.predictor = predictor
        self.image = image
        self.rgb = rgb
        self.shape = spatial_shape(image, rgb)
        if window is None and image.dtype != np.uint8:
            window = IntensityWindow.percentiles(image)
        self.window = window
        self.cache = cache if cache is not None else EmbeddingCache()

    def plane(self, axis: int | None = None, index: int | None = None) -> SlicePlane:
        if len(self.shape) == 3 and axis is None:
            axis = 0
        return SlicePlane.of(self.shape, axis, index)

    def slice_rgb(self, plane: SlicePlane) -> np.ndarray:
        """The slice as the model sees it: (H, W, 3) uint8."""
        return to_rgb(np.asarray(plane.take(self.image)), self.window, rgb=self.rgb)

    def _key(self, plane: SlicePlane):
        return (plane.axis, plane.index, plane.row_axis, plane.col_axis)

    def is_embedded(self, plane: SlicePlane) -> bool:
        return self._key(plane) in self.cache

    def embed(self, plane: SlicePlane) -> Embedding:
        key = self._key(plane)
        embedding = self.cache.get(key)
        if embedding is None:
            embedding = self.predictor.embed(self.slice_rgb(plane))
            self.cache.put(key, embedding)
        return embedding

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
        prompts = Prompts.make(points, labels, box, mask_logits)
        for x, y in prompts.points:
            if not plane.contains(x, y):
                raise InputError(f"The point ({x:.1f}, {y:.1f}) is outside the {plane.size[1]}x{plane.size[0]} slice.")
        return self.predictor.predict(self.embed(plane), prompts, multimask=multimask, all_masks=all_masks)
