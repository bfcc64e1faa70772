"""Which torch device a model runs on: CUDA, then Apple MPS, then CPU, unless the user says otherwise."""

from __future__ import annotations

import ctypes
import os
import sys
import warnings

import torch

from rwth_sam.core.errors import InputError


def available_devices() -> list[str]:
    """Devices this machine can run a model on, best first."""
    devices = []
    if torch.cuda.is_available():
        devices.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    devices.append("cpu")
    return devices


def default_device() -> str:
    return available_devices()[0]


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """Turn a user's choice (or None for the default) into a device, refusing one this machine lacks."""
    if name is None or name == "auto":
        return torch.device(default_device())
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):  # torch's message for a misspelt device lists internal backends
        raise InputError(f"Unknown device '{name}'; choose one of: {', '.join(available_devices())}.") from None
    if device.type not in available_devices():
        raise InputError(f"Device '{name}' is not available here; choose one of: {', '.join(available_devices())}.")
    return device


def warn_mps_fallback(error: Exception) -> None:
    warnings.warn(
        f"An operation is not supported on Apple MPS ({error}); running this model on the CPU instead.",
        RuntimeWarning,
        stacklevel=3,
    )


def leave_a_core_free() -> int:
    """Let the model's CPU threads use all cores but one; returns the thread count now in force.

    In napari the GUI thread renders (with software OpenGL, on the CPU too) while a model runs:
    with torch on every core it got a core only now and then, and froze for 100 ms and more many
    times a second. A thread count the user chose below that (``torch.set_num_threads``,
    ``OMP_NUM_THREADS``) is kept.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cores > 1 and torch.get_num_threads() >= cores:
        torch.set_num_threads(cores - 1)
    return torch.get_num_threads()


def release_freed_memory() -> bool:
    """Hand memory that the model's worker threads freed back to the system (Linux, glibc).

    glibc keeps what a thread frees in that thread's arena: after a 3D run of 2048² slices, resident
    memory stayed about 0.5 GB above what was in use. ``malloc_trim`` returns it (as dask's workers
    do); elsewhere this does nothing. Returns whether memory was trimmed.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):  # not glibc (musl)
        return False
