"""What SAM sees: image intensities mapped to 8-bit RGB through one window for the whole volume.

By default the window is the layer's contrast limits, so the model sees what the user sees; CT
presets (level/width in Hounsfield units) and percentile clipping are the alternatives. Windows are
computed once per volume, never per slice, so neighbouring slices are treated alike. The input
array is never modified.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rwth_sam.core.errors import InputError

# (level, width) in Hounsfield units, as radiology viewers define them.
CT_WINDOWS = {
    "CT soft tissue": (40.0, 400.0),
    "CT lung": (-600.0, 1500.0),
    "CT bone": (400.0, 1800.0),
    "CT brain": (40.0, 80.0),
}

# numpy's dtype kinds that hold intensities (bool, signed and unsigned integers, floats), and what the others hold.
INTENSITY_KINDS = "biuf"
_OTHER_KINDS = {
    "c": "complex numbers (take the magnitude, np.abs, or the real part first)",
    "O": "Python objects",
    "U": "text",
    "T": "text",
    "S": "bytes",
    "V": "records (a structured dtype; pick one of its fields)",
    "M": "dates",
    "m": "time spans",
}


def check_dtype(dtype) -> np.dtype:
    """``dtype`` if its values are intensities rwth-sam can map to 8-bit, else an InputError naming it.

    Every entry point that takes image data calls this, so an unsupported dtype is refused with one
    message rather than failing deep inside numpy.
    """
    dtype = np.dtype(dtype)
    if dtype.kind not in INTENSITY_KINDS:
        holds = _OTHER_KINDS.get(dtype.kind, "no intensities")
        raise InputError(
            f"rwth-sam cannot segment an image of dtype {dtype}: it holds {holds}. "
            "It needs bool, integer or float intensities."
        )
    return dtype


@dataclass(frozen=True)
class IntensityWindow:
    """Values at or below ``low`` become 0, at or above ``high`` become 255, linear between."""

    low: float
    high: float

    def __post_init__(self):
        if not (np.isfinite(self.low) and np.isfinite(self.high)) or self.high <= self.low:
            raise InputError(f"An intensity window needs low < high, got ({self.low}, {self.high}).")

    @classmethod
    def ct_preset(cls, name: str) -> IntensityWindow:
        try:
            level, width = CT_WINDOWS[name]
        except KeyError:
            raise InputError(f"Unknown CT window '{name}'; choose one of {', '.join(CT_WINDOWS)}.") from None
        return cls(level - width / 2, level + width / 2)

    @classmethod
    def percentiles(
        cls, volume: np.ndarray, low: float = 0.5, high: float = 99.5, max_samples: int = 2_000_000
    ) -> IntensityWindow:
        """Clip the whole volume's intensity distribution at two percentiles (sampled for speed).

        A numpy array is sampled at a regular stride. A lazy one (dask, zarr, HDF5) is never read whole:
        at most ``SAMPLED_SLICES`` slices spread evenly along its first axis are read.
        """
        values = _sample(volume).reshape(-1)
        check_dtype(values.dtype)
        if values.dtype == np.bool_:
            values = values.astype(np.uint8)  # numpy's percentile cannot subtract booleans
        stride = max(1, values.size // max_samples)
        values = values[::stride]
        values = values[np.isfinite(values)]
        if values.size == 0:
            raise InputError("The image has no finite values to compute percentiles from.")
        lo, hi = np.percentile(values, [low, high])
        if hi <= lo:  # a constant volume; beyond 2**53 (uint64 data) lo + 1 is lo again
            hi = max(lo + 1.0, np.nextafter(lo, np.inf))
        return cls(float(lo), float(hi))

    @classmethod
    def full_range(cls, dtype: np.dtype) -> IntensityWindow:
        """The whole range of an integer dtype (uint8 maps to itself)."""
        info = np.iinfo(dtype)
        return cls(float(info.min), float(info.max))


SAMPLED_SLICES = 16  # slices a lazy volume's percentile window reads, spread over the volume


def _sample(volume) -> np.ndarray:
    """The values to take percentiles of: all of an in-memory array (strided later), or evenly spaced
    slices of a lazy one (reading only those)."""
    if isinstance(volume, np.ndarray) or np.ndim(volume) < 3:
        return np.asarray(volume)
    depth = volume.shape[0]
    if depth <= SAMPLED_SLICES:
        return np.asarray(volume)
    picked = np.unique(np.linspace(0, depth - 1, SAMPLED_SLICES).round().astype(int))
    return np.stack([np.asarray(volume[int(index)]) for index in picked])


def to_rgb(image: np.ndarray, window: IntensityWindow | None, rgb: bool = False) -> np.ndarray:
    """An (H, W) slice, or an (H, W, 3|4) colour image when ``rgb``, as (H, W, 3) uint8.

    uint8 colour images pass through untouched; other colour images are windowed per channel.
    NaN maps to black, infinities to the window's ends. An all-NaN slice is an error: there is nothing to segment.
    """
    image = np.asarray(image)
    check_dtype(image.dtype)
    if rgb:
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise InputError(f"A colour slice is (H, W, 3) or (H, W, 4), not {image.shape}.")
        image = image[..., :3]
        if image.dtype == np.uint8:
            return np.ascontiguousarray(image)
    elif image.ndim != 2:
        raise InputError(f"A slice must be 2D, not of shape {image.shape}.")
    if image.dtype == np.bool_:
        image = image.astype(np.uint8)
    if window is None:
        if image.dtype == np.uint8:
            return _as_rgb(image, rgb)
        raise InputError(
            f"A {image.dtype} image needs an intensity window (contrast limits, CT preset or percentiles)."
        )
    nan = np.isnan(image) if image.dtype.kind == "f" else None
    if nan is not None and nan.all():
        raise InputError("This slice contains only NaN values: there is nothing to segment.")
    # float32, as always for 8- to 32-bit data (CT in HU, detector counts); 64-bit integers (uint64
    # counts near 2**40, say) would collapse to a few grey values in it, and need float64.
    working = np.float64 if image.dtype.kind in "iu" and image.dtype.itemsize == 8 else np.float32
    scale = 255.0 / (window.high - window.low)
    scaled = (image.astype(working) - working(window.low)) * working(scale)
    if nan is not None:
        scaled[nan] = 0.0
    scaled = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return _as_rgb(scaled, rgb)


def _as_rgb(gray_or_rgb: np.ndarray, rgb: bool) -> np.ndarray:
    if rgb:
        return np.ascontiguousarray(gray_or_rgb)
    return np.ascontiguousarray(np.repeat(gray_or_rgb[:, :, None], 3, axis=2))


CONTRAST_LIMITS = "Layer contrast limits"
PERCENTILES = "Percentiles 0.5–99.5 %"
WINDOW_CHOICES = (CONTRAST_LIMITS, PERCENTILES, *CT_WINDOWS)


def resolve_window(choice: str, image: np.ndarray, contrast_limits=None, rgb: bool = False) -> IntensityWindow | None:
    """The window for a user's choice (one of ``WINDOW_CHOICES``); None where uint8 colour passes through."""
    if rgb and image.dtype == np.uint8:
        return None
    if choice == CONTRAST_LIMITS:
        if contrast_limits is None:
            raise InputError("No contrast limits given for the 'contrast limits' window.")
        return IntensityWindow(*map(float, contrast_limits))
    if choice == PERCENTILES:
        return IntensityWindow.percentiles(image)
    return IntensityWindow.ct_preset(choice)
