"""The segmentation profiles open in this napari session, shared by the reader and the widgets.

``PROFILES`` starts with rwth-sam's example profiles; opening a profile file adds one, the profile
widget edits them. Profiles are immutable: an edit ``add``s a new profile of the same name, which
replaces the old one in place. ``PROFILES.changed`` is emitted after every change.
"""

from __future__ import annotations

import logging

from psygnal import Signal

from rwth_sam.core.labels.profiles import Profile, ProfileError, builtin_profiles

logger = logging.getLogger(__name__)


class ProfileStore:
    """An ordered set of profiles, by name (unique)."""

    changed = Signal()

    def __init__(self, profiles: list[Profile] | None = None):
        self._profiles: list[Profile] = []
        for profile in profiles or ():
            self._put(profile)

    @property
    def profiles(self) -> list[Profile]:
        return list(self._profiles)

    @property
    def names(self) -> list[str]:
        return [profile.name for profile in self._profiles]

    def __len__(self) -> int:
        return len(self._profiles)

    def __contains__(self, name: str) -> bool:
        return self._index(name) is not None

    def _index(self, name: str) -> int | None:
        return next((i for i, profile in enumerate(self._profiles) if profile.name == name), None)

    def _put(self, profile: Profile) -> None:
        if not isinstance(profile, Profile):
            raise TypeError(f"expected a Profile, got {type(profile).__name__}")
        index = self._index(profile.name)
        if index is None:
            self._profiles.append(profile)
        else:
            self._profiles[index] = profile

    def get(self, name: str) -> Profile | None:
        index = self._index(name)
        return None if index is None else self._profiles[index]

    def add(self, profile: Profile) -> Profile:
        """Add a profile, replacing (in place) one of the same name."""
        self._put(profile)
        self.changed.emit()
        return profile

    def replace(self, old_name: str, profile: Profile) -> Profile:
        """Put ``profile`` where ``old_name`` was (a rename keeps the position)."""
        index = self._index(old_name)
        if index is None:
            raise KeyError(old_name)
        other = self._index(profile.name)
        if other is not None and other != index:
            raise ProfileError(f"There is already a profile named '{profile.name}'.")
        self._profiles[index] = profile
        self.changed.emit()
        return profile

    def remove(self, name: str) -> None:
        index = self._index(name)
        if index is None:
            raise KeyError(name)
        del self._profiles[index]
        self.changed.emit()

    def unique_name(self, base: str) -> str:
        """``base``, or ``base 2``, ``base 3``… whichever no profile has yet."""
        name, number = base, 1
        while name in self:
            number += 1
            name = f"{base} {number}"
        return name

    def reset(self) -> None:
        """Back to the example profiles only (for tests)."""
        self._profiles = []
        for profile in _builtin():
            self._put(profile)
        self.changed.emit()


def _builtin() -> list[Profile]:
    try:
        return builtin_profiles()
    except ProfileError as error:  # a broken example must not break napari's start
        logger.warning("rwth-sam example profiles not loaded: %s", error)
        return []


PROFILES = ProfileStore(_builtin())
