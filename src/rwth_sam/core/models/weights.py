"""Checkpoint files: download on first use into a user cache, verified, or taken from a local file.

Downloads go through pooch, which writes to a temporary file in the cache folder and moves it into
place only after the SHA-256 matches, so a partial or corrupt download is never used nor kept.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

from rwth_sam.core.errors import WeightsError

CACHE_ENV_VAR = "RWTH_SAM_CACHE_DIR"
MODEL_ENV_VAR = "RWTH_SAM_MODEL"
CHECKPOINT_ENV_VAR = "RWTH_SAM_CHECKPOINT"


@dataclass(frozen=True)
class Weights:
    """Where a model's official checkpoint lives and how to recognise it."""

    url: str
    sha256: str
    size: int
    filename: str

    @property
    def size_text(self) -> str:
        return format_bytes(self.size)


def format_bytes(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit in ("B", "KB") else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def cache_dir() -> Path:
    """The weights cache: $RWTH_SAM_CACHE_DIR if set, else the platform's user cache folder."""
    override = os.environ.get(CACHE_ENV_VAR)
    if override:
        return Path(override).expanduser()
    return Path(platformdirs.user_cache_dir("rwth-sam")) / "weights"


def startup_choice() -> tuple[str | None, Path | None]:
    """The model and local checkpoint the widget starts with: $RWTH_SAM_MODEL and $RWTH_SAM_CHECKPOINT.

    They let a user (or a test) work offline with a checkpoint of their own from any entry point,
    plain ``napari`` included; ``python -m rwth_sam --model --checkpoint`` sets the same two.
    """
    checkpoint = os.environ.get(CHECKPOINT_ENV_VAR)
    return os.environ.get(MODEL_ENV_VAR) or None, Path(checkpoint).expanduser() if checkpoint else None


def cached_path(weights: Weights) -> Path:
    return cache_dir() / weights.filename


def is_cached(weights: Weights) -> bool:
    """True when a verified copy is in the cache (only verified files are ever moved there)."""
    path = cached_path(weights)
    return path.is_file() and path.stat().st_size == weights.size


def fetch(weights: Weights, progressbar: Any = True) -> Path:
    """Return the cached checkpoint, downloading and verifying it first if needed.

    ``progressbar`` is passed to pooch: True for a console bar, False for none, or a tqdm-like
    object (napari's ``progress`` is one) that receives the byte counts.
    """
    if is_cached(weights):
        return cached_path(weights)
    import pooch
    import requests

    downloader = pooch.HTTPDownloader(progressbar=progressbar, timeout=60)
    try:
        path = pooch.retrieve(
            weights.url,
            known_hash=f"sha256:{weights.sha256}",
            fname=weights.filename,
            path=cache_dir(),
            downloader=downloader,
        )
    except ValueError as error:  # pooch's hash mismatch
        raise WeightsError(
            f"The download of {weights.filename} from {weights.url} is corrupt or incomplete "
            f"(its SHA-256 does not match); it was not kept. Try again, or pick a local checkpoint.\n{error}"
        ) from error
    except requests.exceptions.RequestException as error:
        raise WeightsError(
            f"Could not download {weights.filename} ({weights.size_text}) from {weights.url}: {error}. "
            f"Check the connection, or put the file at {cached_path(weights)}, or pick a local checkpoint."
        ) from error
    except OSError as error:
        raise WeightsError(f"Could not write {weights.filename} into {cache_dir()}: {error}") from error
    return Path(path)


def load_state_dict(path: str | os.PathLike) -> Mapping[str, Any]:
    """Read a checkpoint's state dict on the CPU, unwrapping the {"model": ...} form SAM 2 uses.

    Only tensors and plain containers are unpickled (``weights_only``): a checkpoint holding other
    Python objects could run code as it is opened, so it is refused unread.
    """
    import torch

    path = Path(path)
    if path.is_dir():
        raise WeightsError(f"{path} is a folder; pick the checkpoint file (.pt or .pth) in it.")
    if not path.is_file():
        raise WeightsError(f"Checkpoint file not found: {path}")
    if path.stat().st_size == 0:
        raise WeightsError(f"Checkpoint {path} is empty (0 bytes): an interrupted download or copy. Fetch it again.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as error:
        raise WeightsError(f"Could not read checkpoint {path}: {error.strerror or error}.") from error
    except Exception as error:  # torch raises many types for truncated, foreign or unsafe files
        found = re.search(r"GLOBAL ([\w.]+)", str(error)) if _WEIGHTS_ONLY in str(error) else None
        if found:
            raise WeightsError(
                f"Checkpoint {path} was not opened: besides weights it holds Python objects ({found.group(1)}), "
                "and unpickling those can run code. If you trust the file, re-save its weights alone "
                "(torch.save(model.state_dict(), path)) and pick that file."
            ) from None
        raise WeightsError(
            f"Could not read checkpoint {path}: the file is truncated, corrupt or not a PyTorch checkpoint "
            f"({_torch_reason(error)})."
        ) from error
    for key in ("model", "state_dict"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not state:
        raise WeightsError(f"Checkpoint {path} holds no model weights.")
    unnamed = next((key for key in state if not isinstance(key, str)), None)
    if unnamed is not None:  # a state dict is keyed by weight names; torch fails on others with an AttributeError
        raise WeightsError(f"Checkpoint {path} is not a state dict: {unnamed!r} is not the name of a weight.")
    return state


_WEIGHTS_ONLY = "Weights only load failed"


def _torch_reason(error: Exception, limit: int = 160) -> str:
    """torch's reason in one line, without its advice to load with ``weights_only=False`` (which would
    run whatever code the file holds)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if lines and lines[0].startswith(_WEIGHTS_ONLY):
        lines = [line for line in lines if line.startswith("Unsupported")] or ["not tensors alone"]
    reason = lines[0] if lines else type(error).__name__
    return reason if len(reason) <= limit else reason[: limit - 1] + "…"
