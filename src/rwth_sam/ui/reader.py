"""npe2 reader: opening a profile JSON in napari (File > Open, drag and drop, ``viewer.open``) adds it to PROFILES.

A profile makes no layer, so the reader returns napari's "handled, no layers" sentinel ``[(None,)]``
(an empty list would count as a failed read). JSON files that are not profiles are left to other
readers. A broken profile is reported with ``show_error`` and nothing is added.
"""

from __future__ import annotations

import os
from pathlib import Path

from napari.utils.notifications import show_error, show_info

from ..core.profiles import Profile, ProfileError, is_profile_file
from .profile_store import PROFILES

NO_LAYERS = [(None,)]


def _paths(path) -> list[str] | None:
    if isinstance(path, (str, os.PathLike)):
        return [os.fspath(path)]
    if isinstance(path, (list, tuple)) and all(isinstance(p, (str, os.PathLike)) for p in path):
        return [os.fspath(p) for p in path]
    return None


def get_reader(path):
    """The reader for profile files (one, or a list of them); None for anything else."""
    paths = _paths(path)
    if not paths or not all(is_profile_file(p) for p in paths):
        return None
    return read_profiles


def read_profiles(path, **_kwargs) -> list[tuple]:
    """Load each profile into PROFILES, telling the user; broken files are reported and skipped."""
    for item in _paths(path) or []:
        try:
            profile = Profile.load(item)
        except ProfileError as error:
            show_error(str(error))
            continue
        replaced = profile.name in PROFILES
        PROFILES.add(profile)
        what = "replaced the open profile of that name" if replaced else "added to the segmentation profiles"
        show_info(f"Profile '{profile.name}' ({len(profile.classes)} classes) from {Path(item).name}: {what}.")
    return NO_LAYERS
