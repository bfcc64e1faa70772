"""npe2 reader: opening a profile JSON in napari (File > Open, drag and drop, ``viewer.open``) adds it to PROFILES.

The manifest claims ``*.json`` (profiles have no suffix of their own), and napari picks its reader by
file name alone: when rwth-sam is the only ``*.json`` reader, napari hands it every JSON file. So:

- a profile file is read (a broken one is reported with ``show_error``, and nothing is added);
- another JSON file is left to another plugin that reads ``*.json`` (``get_reader`` returns None,
  and napari offers the others) when one is installed, and otherwise is answered with a message
  saying that it is not a segmentation profile and why, instead of napari's "rwth-sam refused the file".

A profile makes no layer, so the reader returns napari's "handled, no layers" sentinel ``[(None,)]``
(an empty list would count as a failed read).
"""

from __future__ import annotations

import os
from pathlib import Path

from napari.utils.notifications import show_error, show_info
from npe2 import PluginManager

from rwth_sam.core.labels.profile_store import PROFILES
from rwth_sam.core.labels.profiles import Profile, ProfileError, is_profile_file
from rwth_sam.ui.reporting import show_user_error

NO_LAYERS = [(None,)]
READER_COMMAND = "rwth-sam.get_profile_reader"  # as in napari.yaml


def _paths(path) -> list[str] | None:
    if isinstance(path, (str, os.PathLike)):
        return [os.fspath(path)]
    if isinstance(path, (list, tuple)) and all(isinstance(p, (str, os.PathLike)) for p in path):
        return [os.fspath(p) for p in path]
    return None


def _another_reader_for(path: str) -> bool:
    """Whether an installed plugin other than rwth-sam reads files named like ``path``."""
    readers = PluginManager.instance().iter_compatible_readers([path])
    return any(reader.command != READER_COMMAND for reader in readers)


def get_reader(path):
    """The reader for profile files (one, or a list of them), and for JSON files no other plugin reads; None
    for anything else."""
    paths = _paths(path)
    if not paths or not all(Path(p).suffix.lower() == ".json" for p in paths):
        return None
    if all(is_profile_file(p) for p in paths) or not _another_reader_for(paths[0]):
        return read_profiles
    return None


def read_profiles(path, **_kwargs) -> list[tuple]:
    """Load each profile into PROFILES, telling the user; broken files and other JSON files are reported and
    skipped."""
    for item in _paths(path) or []:
        try:
            _read_profile(item)
        except Exception as error:  # noqa: BLE001  (a fault nobody anticipated: a message, not napari's traceback)
            show_user_error(error, f"Opening {Path(item).name}")
    return NO_LAYERS


def _read_profile(path: str) -> None:
    try:
        profile = Profile.load(path)
    except ProfileError as error:
        if is_profile_file(path):
            show_error(str(error))
        else:
            show_error(
                f"{Path(path).name} is not a segmentation profile, and no other installed plugin reads .json files, "
                f"so nothing was opened. {error}"
            )
        return
    add_profile(profile, Path(path).name)


def add_profile(profile: Profile, file_name: str) -> None:
    """Put a profile read from a file into PROFILES, telling the user (it may replace one of that name)."""
    replaced = profile.name in PROFILES
    PROFILES.add(profile)
    what = "replaced the open profile of that name" if replaced else "added to the segmentation profiles"
    show_info(f"Profile '{profile.name}' ({len(profile.classes)} classes) from {file_name}: {what}.")
