"""The segmentation profiles open in this session, shared by the reader and the widgets.

``PROFILES`` starts with rwth-sam's example profiles; opening a profile file adds one, the profile
widget edits them. Profiles are immutable: an edit ``add``s a new profile of the same name, which
replaces the old one in place. ``PROFILES.changed`` is emitted once after every change, whatever it
was (one signal is all the widgets need: each redraws its list).
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
        self._profiles: dict[str, Profile] = {}  # in the order they came; replacing one keeps its place
        for profile in profiles or ():
            self._put(profile)

    @property
    def profiles(self) -> list[Profile]:
        return list(self._profiles.values())

    @property
    def names(self) -> list[str]:
        return list(self._profiles)

    def __len__(self) -> int:
        return len(self._profiles)

    def __contains__(self, name: str) -> bool:
        return name in self._profiles

    def _put(self, profile: Profile) -> None:
        if not isinstance(profile, Profile):
            raise TypeError(f"expected a Profile, got {type(profile).__name__}")
        self._profiles[profile.name] = profile

    def get(self, name: str) -> Profile | None:
        return self._profiles.get(name)

    def add(self, profile: Profile) -> Profile:
        """Add a profile, replacing (in place) one of the same name."""
        self._put(profile)
        self.changed.emit()
        return profile

    def replace(self, old_name: str, profile: Profile) -> Profile:
        """Put ``profile`` where ``old_name`` was (a rename keeps the position)."""
        if old_name not in self._profiles:
            raise KeyError(old_name)
        if profile.name != old_name and profile.name in self._profiles:
            raise ProfileError(f"There is already a profile named '{profile.name}'.")
        self._profiles = {
            (profile.name if name == old_name else name): (profile if name == old_name else kept)
            for name, kept in self._profiles.items()
        }
        self.changed.emit()
        return profile

    def remove(self, name: str) -> None:
        del self._profiles[name]
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
        self._profiles = {}
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
