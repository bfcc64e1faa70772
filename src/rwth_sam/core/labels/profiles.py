"""Segmentation profiles: a named, versioned list of classes (name, label value, colour), stored as JSON.

A profile says what the label values of a labels layer mean::

    profile = Profile.load("profiles/li_ion_cylindrical_cell.json")
    profile.class_by_value(3).name      # "anode"
    profile.color_dict()                # for napari's DirectLabelColormap
    profile.features()                  # for napari's Labels.features (class names in the status bar)

Everything is validated when a profile is made (from Python or from JSON); a problem raises
``ProfileError``, which says where it is (``class_index``, ``field``) and whose message names the JSON
path of the offending field, e.g. ``classes[2].color: 'red' is not a colour of the form #rrggbb``
(``table_message`` names the row and column instead). The rules for new classes (their default name,
label value and colour) and for file names live here too, so that every editor follows them. The
file format is described in ``profiles/README.md``. Nothing here imports Qt or napari.

A profile holds at most ``MAX_CLASSES`` classes and its file at most ``MAX_PROFILE_BYTES``: a
dataset's classes (battery phases, organs; TotalSegmentator has 117) fit many times over, and a
file beyond that is refused before it is parsed, so that no widget or colormap is ever asked to
show half a million classes.
"""

from __future__ import annotations

import codecs
import colorsys
import json
import os
import re
import reprlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from rwth_sam.core.errors import InputError

PROFILE_FORMAT = "rwth-sam-profile"
PROFILE_VERSION = 1
MAX_LABEL_VALUE = 2**31 - 1
MAX_CLASSES = 5_000
MAX_PROFILE_BYTES = 4 * 2**20  # 4 MiB: 5000 classes with descriptions of some 700 characters each
_SIZE_LIMIT = f"{MAX_PROFILE_BYTES} bytes ({MAX_PROFILE_BYTES // 2**20} MiB)"
BACKGROUND_NAME = "background"
_HEX_COLOR = re.compile(r"#[0-9a-fA-F]{6}")
_SNIFF_BYTES = 64 * 1024
_FORMAT_KEY = re.compile(rb'"format"\s*:\s*"' + re.escape(PROFILE_FORMAT.encode()) + rb'"')
_PROFILE_KEYS = ("format", "version", "name", "description", "classes")
_CLASS_KEYS = ("name", "value", "color", "description")
_MAX_DIGITS = 20  # a JSON number longer than this cannot be a label value (at most 10 digits)
_SHORT = reprlib.Repr()  # values quoted in messages: a huge or deeply nested one is shortened
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 3, 60, 60
UNKNOWN_LABEL_COLOR = "#808080"  # label values that are not in a profile stay visible, in grey
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")
_GOLDEN_RATIO_CONJUGATE = 0.618034  # hue steps of this size never repeat and stay far apart
_CLASS_FIELD_TITLES = {"color": "colour", "value": "label value"}  # as a table's columns name them
_PROFILE_FIELD_TITLES = {"name": "Profile name", "description": "Profile description", "classes": "Classes"}


def _json_place(index: int) -> str:
    return f"classes[{index}]"


def _row_place(index: int) -> str:
    return f"row {index + 1}"


class ProfileError(InputError):
    """A profile (or profile file) is invalid, and where: in the class at ``class_index`` (if any), in its
    ``field`` (a class's ``"color"``, or a profile's own ``"name"``; None: the class or file as a whole).

    The message names the place as a JSON path (``classes[2].color: ...``); ``table_message`` names it as a
    table of the classes shows it (``Row 3, colour: ...``), so no one has to parse it back.
    """

    def __init__(self, problem: str, field: str | None = None, class_index: int | None = None):
        self.problem = problem
        self.field = field
        self.class_index = class_index
        super().__init__(self._located(self._problem(_json_place), self.path))

    @property
    def path(self) -> str | None:
        """The JSON path of the problem (``classes[2].color``), or None."""
        if self.class_index is None:
            return self.field
        return _json_place(self.class_index) + (f".{self.field}" if self.field else "")

    def in_class(self, index: int) -> ProfileError:
        """The same problem of a class's field, in the class at ``index`` of a profile."""
        return ProfileError(self.problem, self.field, index)

    def table_message(self) -> str:
        """The message as a table of the classes shows it: rows counted from 1, fields named by their columns.
        A problem of no field or class (a file's) is told as it is."""
        if self.class_index is not None:
            field = _CLASS_FIELD_TITLES.get(self.field, self.field)
            where = f"Row {self.class_index + 1}" + (f", {field}" if field else "")
        else:
            where = _PROFILE_FIELD_TITLES.get(self.field, self.field)
        return self._located(self._problem(_row_place), where)

    def _problem(self, place: Callable[[int], str]) -> str:
        """The problem, with any other class it names called ``place(index)``."""
        return self.problem

    @staticmethod
    def _located(problem: str, where: str | None) -> str:
        return f"{where}: {problem}" if where else problem


class DuplicateClassError(ProfileError):
    """A class has the name (``field`` "name") or label value (``field`` "value") of an earlier one, the class at
    ``same_as``."""

    def __init__(self, field: str, class_index: int, same_as: int, classes: tuple[SegmentationClass, ...]):
        self.same_as = same_as
        self._duplicate, self._first = classes[class_index], classes[same_as]
        super().__init__("", field, class_index)
        self.problem = self._problem(_json_place)  # as a file names it, like every ProfileError's

    def _problem(self, place: Callable[[int], str]) -> str:
        if self.field == "name":
            return f"'{self._duplicate.name}' is already the name of {place(self.same_as)}; class names must be unique"
        return (
            f"{self._duplicate.value} is already the label value of {place(self.same_as)} ('{self._first.name}'); "
            "label values must be unique"
        )


def _text(value: Any, path: str, *, required: bool) -> str:
    if not isinstance(value, str):
        raise ProfileError(f"must be a string, not {_json_type(value)}", path)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:  # JSON's "\ud800" escape: a string no file can hold
        raise ProfileError(
            f"holds {value[error.start]!r}, half of a surrogate pair, which is no character", path
        ) from None
    value = value.strip()
    if required and not value:
        raise ProfileError("must not be empty", path)
    return value


def _shown(value: Any) -> str:
    """``repr(value)``, short enough for a message whatever the file held."""
    return _SHORT.repr(value)


def _size(size: int) -> str:
    return f"{size} bytes ({size / 2**20:.1f} MiB)"


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


@dataclass(frozen=True)
class SegmentationClass:
    """One class of a profile: its name, the label value it is painted with, and its colour (#rrggbb)."""

    name: str
    value: int
    color: str
    description: str = ""

    def __post_init__(self):
        name = _text(self.name, "name", required=True)
        if name.casefold() == BACKGROUND_NAME:
            raise ProfileError(f"'{name}' is reserved for label value 0 (unlabelled pixels)", "name")
        value = self.value
        if isinstance(value, bool) or not isinstance(value, int):
            raise ProfileError(f"must be a whole number from 1 to {MAX_LABEL_VALUE}, not {_shown(value)}", "value")
        if not 1 <= value <= MAX_LABEL_VALUE:
            raise ProfileError(
                f"must be from 1 to {MAX_LABEL_VALUE} (0 is the background), not {_shown(value)}", "value"
            )
        color = self.color
        if not isinstance(color, str) or not _HEX_COLOR.fullmatch(color.strip()):
            raise ProfileError(f"{_shown(color)} is not a colour of the form #rrggbb (e.g. #ff8800)", "color")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "value", int(value))
        object.__setattr__(self, "color", color.strip().lower())
        object.__setattr__(self, "description", _text(self.description, "description", required=False))

    def to_dict(self) -> dict:
        return {"name": self.name, "value": self.value, "color": self.color, "description": self.description}

    @classmethod
    def from_dict(cls, data: Any) -> SegmentationClass:
        if not isinstance(data, dict):
            raise ProfileError(f"a class must be an object with {', '.join(_CLASS_KEYS)}, not {_json_type(data)}")
        _check_keys(data, _CLASS_KEYS, required=("name", "value", "color"))
        return cls(data["name"], data["value"], data["color"], data.get("description", ""))


def _check_keys(data: dict, allowed: tuple[str, ...], required: tuple[str, ...]) -> None:
    for key in data:
        if key not in allowed:
            raise ProfileError(f"unknown key {_shown(key)} (allowed: {', '.join(allowed)})")
    for key in required:
        if key not in data:
            raise ProfileError("is missing", key)


@dataclass(frozen=True)
class Profile:
    """A named list of classes; names are unique (ignoring case), and so are label values."""

    name: str
    classes: tuple[SegmentationClass, ...] = ()
    description: str = ""

    def __post_init__(self):
        object.__setattr__(self, "name", _text(self.name, "name", required=True))
        object.__setattr__(self, "description", _text(self.description, "description", required=False))
        classes = self.classes
        if isinstance(classes, (str, bytes, dict)) or not hasattr(classes, "__iter__"):
            raise ProfileError(f"must be a list of classes, not {_json_type(classes)}", "classes")
        classes = tuple(classes)
        _check_count(len(classes))
        names: dict[str, int] = {}
        values: dict[int, int] = {}
        for index, item in enumerate(classes):
            if not isinstance(item, SegmentationClass):
                raise ProfileError(f"must be a SegmentationClass, not {type(item).__name__}", class_index=index)
            first = names.setdefault(item.name.casefold(), index)
            if first != index:
                raise DuplicateClassError("name", index, first, classes)
            first = values.setdefault(item.value, index)
            if first != index:
                raise DuplicateClassError("value", index, first, classes)
        object.__setattr__(self, "classes", classes)

    # ----------------------------------------------------------------- JSON
    def to_dict(self) -> dict:
        return {
            "format": PROFILE_FORMAT,
            "version": PROFILE_VERSION,
            "name": self.name,
            "description": self.description,
            "classes": [item.to_dict() for item in self.classes],
        }

    @classmethod
    def from_dict(cls, data: Any) -> Profile:
        if not isinstance(data, dict):
            raise ProfileError(f"a profile must be a JSON object, not {_json_type(data)}")
        if data.get("format") != PROFILE_FORMAT:
            found = f"'format' is {_shown(data['format'])}" if "format" in data else "'format' is missing"
            raise ProfileError(f'not an rwth-sam profile: {found}, expected "{PROFILE_FORMAT}"', "format")
        version = data.get("version")
        if isinstance(version, bool) or not isinstance(version, int):
            found = "missing" if "version" not in data else _shown(version)
            raise ProfileError(
                f"must be a whole number (this rwth-sam reads version {PROFILE_VERSION}), not {found}", "version"
            )
        if version != PROFILE_VERSION:
            newer = " (made by a newer rwth-sam: update rwth-sam to open it)" if version > PROFILE_VERSION else ""
            raise ProfileError(
                f"profile format version {version} is not supported; this rwth-sam reads version {PROFILE_VERSION}{newer}",
                "version",
            )
        _check_keys(data, _PROFILE_KEYS, required=("name",))
        raw_classes = data.get("classes", [])
        if not isinstance(raw_classes, list):
            raise ProfileError(f"must be a list of classes, not {_json_type(raw_classes)}", "classes")
        _check_count(len(raw_classes))  # before validating half a million of them
        classes = []
        for index, item in enumerate(raw_classes):
            try:
                classes.append(SegmentationClass.from_dict(item))
            except ProfileError as error:
                raise error.in_class(index) from None
        return cls(data["name"], tuple(classes), data.get("description", ""))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the profile as JSON (UTF-8, indented); the file is replaced only once fully written.

        A profile whose file would be larger than ``load`` accepts is refused, so every saved profile opens again.
        """
        path = Path(path)
        data = (json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n").encode("utf-8")
        if len(data) > MAX_PROFILE_BYTES:
            raise ProfileError(
                f"Cannot save the profile to {path}: its file would be {_size(len(data))}; a profile file may be "
                f"at most {_SIZE_LIMIT}: shorten the descriptions"
            )
        partial = path.with_name(path.name + ".partial")
        try:
            partial.write_bytes(data)
            os.replace(partial, path)
        except OSError as error:
            partial.unlink(missing_ok=True)
            raise ProfileError(f"Cannot save the profile to {path}: {error.strerror or error}") from error
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Profile:
        """Read a profile file: UTF-8 (with or without a byte order mark), at most ``MAX_PROFILE_BYTES``."""
        path = Path(path)
        try:
            return cls.from_dict(_parse_json(_read_limited(path)))
        except ProfileError as error:
            raise ProfileError(f"Cannot load profile {path}: {error}") from None

    # ----------------------------------------------------------------- queries
    def class_by_value(self, value: int) -> SegmentationClass | None:
        return next((item for item in self.classes if item.value == value), None)

    def class_by_name(self, name: str) -> SegmentationClass | None:
        """The class of that name (ignoring case and surrounding spaces), or None."""
        key = name.strip().casefold()
        return next((item for item in self.classes if item.name.casefold() == key), None)

    def next_free_value(self) -> int:
        """A label value for a new class: one more than the largest in use (1 for an empty profile)."""
        used = {item.value for item in self.classes}
        largest = max(used, default=0)
        if largest < MAX_LABEL_VALUE:
            return largest + 1
        return next(value for value in range(1, MAX_LABEL_VALUE + 1) if value not in used)

    def new_class_name(self) -> str:
        """A name for a new class: ``class N``, N the class's row counted from 1 (or the next number free)."""
        number = len(self.classes) + 1
        while self.class_by_name(f"class {number}") is not None:
            number += 1
        return f"class {number}"

    def free_color(self) -> str:
        """A colour for a new class that no class has yet: the palette's first, then hues spread around the wheel."""
        used = {item.color for item in self.classes}
        for color in PALETTE:
            if color not in used:
                return color
        for step in range(len(used) + 1):
            red, green, blue = colorsys.hsv_to_rgb((step * _GOLDEN_RATIO_CONJUGATE) % 1.0, 0.75, 0.9)
            color = f"#{round(red * 255):02x}{round(green * 255):02x}{round(blue * 255):02x}"
            if color not in used:
                return color
        return "#ffffff"

    def new_class(
        self, name: str | None = None, value: int | None = None, color: str | None = None, description: str = ""
    ) -> SegmentationClass:
        """A class to append; by default with a new name, the next free label value and an unused colour. A problem
        with the fields given is located in the row the class would take."""
        try:
            return SegmentationClass(
                self.new_class_name() if name is None else name,
                self.next_free_value() if value is None else value,
                color or self.free_color(),
                description,
            )
        except ProfileError as error:
            raise error.in_class(len(self.classes)) from None

    def file_name(self) -> str:
        """A file name to save the profile as: its name in lower case, other characters than letters, digits and
        ``-`` as ``_`` (``Li-ion cylindrical cell`` -> ``li-ion_cylindrical_cell.json``)."""
        stem = re.sub(r"[^\w-]+", "_", self.name.lower()).strip("_")
        return f"{stem or 'profile'}.json"

    def color_dict(self, unknown: str = "transparent") -> dict[int | None, str]:
        """{None: unknown, 0: "transparent", value: "#rrggbb", ...} for napari's DirectLabelColormap.

        ``None`` is the colour of label values that are not in the profile.
        """
        colors: dict[int | None, str] = {None: unknown, 0: "transparent"}
        colors.update((item.value, item.color) for item in self.classes)
        return colors

    def features(self) -> dict[str, list]:
        """{"index": [0, values...], "class": ["background", names...]} for napari's Labels.features."""
        return {
            "index": [0, *(item.value for item in self.classes)],
            "class": [BACKGROUND_NAME, *(item.name for item in self.classes)],
        }


def readable_text_color(background: str) -> str:
    """Black or white, whichever reads better on a ``#rrggbb`` background (by its luma, ITU-R BT.601)."""
    red, green, blue = (int(background[i : i + 2], 16) for i in (1, 3, 5))
    return "#000000" if 0.299 * red + 0.587 * green + 0.114 * blue > 140 else "#ffffff"


def _check_count(count: int) -> None:
    if count > MAX_CLASSES:
        raise ProfileError(f"{count} classes are too many: a profile may hold at most {MAX_CLASSES}", "classes")


def _read_limited(path: Path) -> bytes:
    """The file's bytes; one larger than ``MAX_PROFILE_BYTES`` is refused before it is read."""
    try:
        size = path.stat().st_size
        if size <= MAX_PROFILE_BYTES:
            with path.open("rb") as file:
                data = file.read(MAX_PROFILE_BYTES + 1)  # a file may grow, a device may have no size
            size = len(data)
    except OSError as error:
        raise ProfileError(error.strerror or str(error)) from None
    if size > MAX_PROFILE_BYTES:
        raise ProfileError(f"the file is {_size(size)}; a profile file may be at most {_SIZE_LIMIT}")
    return data


def _parse_json(data: bytes) -> Any:
    """JSON from UTF-8 bytes (a byte order mark, as Windows Notepad writes, is dropped), or a ProfileError saying why not."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise ProfileError("it is not a UTF-8 text file: it starts with a UTF-16 byte order mark (save it as UTF-8)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ProfileError(
            f"it is not a UTF-8 text file: byte 0x{data[error.start]:02x} at position {error.start} is not UTF-8 "
            "(save it as UTF-8)"
        ) from None
    if "\x00" in text:
        raise ProfileError("it is not a UTF-8 text file: it holds NUL bytes (a binary file, or UTF-16 text)")
    if not text.strip():
        raise ProfileError("the file is empty")
    try:
        return json.loads(text, object_pairs_hook=_object_without_repeated_keys, parse_int=_short_int)
    except json.JSONDecodeError as error:
        raise ProfileError(f"not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}") from None
    except RecursionError:
        raise ProfileError("not valid JSON for a profile: it is nested too deeply") from None


def _object_without_repeated_keys(pairs: list[tuple[str, Any]]) -> dict:
    """A JSON object; a key given twice would silently keep only its last value, so it is refused."""
    data = dict(pairs)
    if len(data) < len(pairs):
        seen: set[str] = set()
        repeated = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise ProfileError(f"the key {_shown(repeated)} is given twice in one object; each key may appear once")
    return data


def _short_int(digits: str) -> int:
    if len(digits.lstrip("-")) > _MAX_DIGITS:
        raise ProfileError(f"a number of {len(digits.lstrip('-'))} digits is too long for a label value")
    return int(digits)


def is_profile_file(path: str | os.PathLike) -> bool:
    """Whether a ``.json`` file is a profile: its top-level ``"format"`` is ``"rwth-sam-profile"``.

    A file that says so in its first 64 KiB counts even when it is broken (invalid JSON, too large),
    so that opening it reports what is wrong instead of "no reader". Files up to ``MAX_PROFILE_BYTES``
    are parsed, so a profile whose ``"format"`` comes last counts too, and another JSON file that
    holds a profile's ``"format"`` in a nested object does not.
    """
    try:
        path = Path(path)
        if path.suffix.lower() != ".json" or not path.is_file():
            return False
        with path.open("rb") as file:
            head = file.read(MAX_PROFILE_BYTES + 1)
    except (OSError, TypeError, ValueError):
        return False
    says_so = _FORMAT_KEY.search(head[:_SNIFF_BYTES]) is not None
    if len(head) > MAX_PROFILE_BYTES:
        return says_so  # too large to parse: loading it says so
    try:
        data = _parse_json(head)
    except ProfileError:
        return says_so  # broken: loading it says how
    return isinstance(data, dict) and data.get("format") == PROFILE_FORMAT


# ----------------------------------------------------------------- built-in profiles
def builtin_profiles_dir() -> Path | None:
    """Where the example profiles are: ``rwth_sam/profiles`` in an installed package, else the checkout's ``profiles/``."""
    packaged = resources.files("rwth_sam") / "profiles"
    candidates = [Path(str(packaged)), Path(__file__).resolve().parents[4] / "profiles"]
    return next((folder for folder in candidates if folder.is_dir() and any(folder.glob("*.json"))), None)


def builtin_profiles() -> list[Profile]:
    """The example profiles shipped with rwth-sam, sorted by file name."""
    folder = builtin_profiles_dir()
    if folder is None:
        return []
    return [Profile.load(path) for path in sorted(folder.glob("*.json")) if is_profile_file(path)]
