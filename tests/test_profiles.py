"""Segmentation profiles in the core: JSON round trip, validation messages, example profiles (no Qt)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rwth_sam.core import phantom
from rwth_sam.core.errors import InputError
from rwth_sam.core.profiles import (
    PROFILE_FORMAT,
    PROFILE_VERSION,
    Profile,
    ProfileError,
    SegmentationClass,
    builtin_profiles,
    builtin_profiles_dir,
    is_profile_file,
)

ROOT = Path(__file__).resolve().parents[1]
TOTALSEG_LABELS = ROOT.parent / "shared" / "data" / "medct_totalseg_wholebody" / "totalsegmentator_total_labels.json"


def example() -> Profile:
    return Profile(
        "Cell",
        (
            SegmentationClass("casing", 1, "#9E9E9E", "steel can"),
            SegmentationClass("anode", 3, "#1f77b4"),
            SegmentationClass("cathode", 2, "#d62728"),
        ),
        description="test profile",
    )


def valid_dict() -> dict:
    return example().to_dict()


def test_json_round_trip(tmp_path):
    profile = example()
    assert profile.classes[0].color == "#9e9e9e"  # normalised to lower case
    path = profile.save(tmp_path / "cell.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["format"] == PROFILE_FORMAT and data["version"] == PROFILE_VERSION
    assert [item["name"] for item in data["classes"]] == ["casing", "anode", "cathode"]  # order kept
    assert Profile.load(path) == profile
    assert Profile.from_dict(profile.to_dict()) == profile
    assert not list(tmp_path.glob("*.partial"))


def test_unicode_and_optional_fields(tmp_path):
    data = {"format": PROFILE_FORMAT, "version": 1, "name": "Zellen – Ü", "classes": [{"name": "Kathode", "value": 7, "color": "#ABCDEF"}]}
    path = tmp_path / "u.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    profile = Profile.load(path)
    assert profile.name == "Zellen – Ü" and profile.description == "" and profile.classes[0].description == ""
    assert Profile.load(profile.save(path)) == profile
    assert Profile.from_dict({"format": PROFILE_FORMAT, "version": 1, "name": "empty"}).classes == ()


def test_queries():
    profile = example()
    assert profile.class_by_value(3).name == "anode"
    assert profile.class_by_value(4) is None
    assert profile.class_by_name(" Cathode ").value == 2
    assert profile.class_by_name("pore") is None
    assert profile.next_free_value() == 4
    assert Profile("empty").next_free_value() == 1
    assert Profile("top", (SegmentationClass("a", 2**31 - 1, "#000000"),)).next_free_value() == 1


def test_color_dict_and_features():
    profile = example()
    assert profile.color_dict() == {None: "transparent", 0: "transparent", 1: "#9e9e9e", 3: "#1f77b4", 2: "#d62728"}
    assert profile.color_dict(unknown="#808080")[None] == "#808080"
    assert profile.features() == {"index": [0, 1, 3, 2], "class": ["background", "casing", "anode", "cathode"]}


def test_profile_error_is_an_input_error():
    assert issubclass(ProfileError, InputError) and issubclass(ProfileError, ValueError)


def _with_class(**fields) -> dict:
    data = valid_dict()
    data["classes"][1].update(fields)
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "a profile must be a JSON object, not a list"),
        ({**valid_dict(), "format": "other"}, "format: not an rwth-sam profile: 'format' is 'other', expected \"rwth-sam-profile\""),
        ({key: value for key, value in valid_dict().items() if key != "format"}, "format: not an rwth-sam profile: 'format' is missing"),
        ({**valid_dict(), "version": "1"}, "version: must be a whole number (this rwth-sam reads version 1), not '1'"),
        ({key: value for key, value in valid_dict().items() if key != "version"}, "version: must be a whole number (this rwth-sam reads version 1), not missing"),
        ({**valid_dict(), "version": 2}, "version: profile format version 2 is not supported; this rwth-sam reads version 1 (made by a newer rwth-sam"),
        ({**valid_dict(), "version": 0}, "version: profile format version 0 is not supported; this rwth-sam reads version 1"),
        ({**valid_dict(), "colour": "x"}, "unknown key 'colour' (allowed: format, version, name, description, classes)"),
        ({key: value for key, value in valid_dict().items() if key != "name"}, "name: is missing"),
        ({**valid_dict(), "name": "  "}, "name: must not be empty"),
        ({**valid_dict(), "name": 3}, "name: must be a string, not a number"),
        ({**valid_dict(), "description": None}, "description: must be a string, not null"),
        ({**valid_dict(), "classes": {"a": 1}}, "classes: must be a list of classes, not an object"),
        ({**valid_dict(), "classes": [1]}, "classes[0]: a class must be an object with name, value, color, description, not a number"),
        (_with_class(colour="#ffffff"), "classes[1]: unknown key 'colour' (allowed: name, value, color, description)"),
        ({**valid_dict(), "classes": [{"name": "a", "value": 1}]}, "classes[0].color: is missing"),
        (_with_class(name=""), "classes[1].name: must not be empty"),
        (_with_class(name=["a"]), "classes[1].name: must be a string, not a list"),
        (_with_class(name="Background"), "classes[1].name: 'Background' is reserved for label value 0"),
        (_with_class(name="CASING"), "classes[1].name: 'CASING' is already the name of classes[0]; class names must be unique"),
        (_with_class(value=0), "classes[1].value: must be from 1 to 2147483647 (0 is the background), not 0"),
        (_with_class(value=-4), "classes[1].value: must be from 1 to 2147483647 (0 is the background), not -4"),
        (_with_class(value=2**31), "classes[1].value: must be from 1 to 2147483647 (0 is the background), not 2147483648"),
        (_with_class(value=2.5), "classes[1].value: must be a whole number from 1 to 2147483647, not 2.5"),
        (_with_class(value=True), "classes[1].value: must be a whole number from 1 to 2147483647, not True"),
        (_with_class(value="3"), "classes[1].value: must be a whole number from 1 to 2147483647, not '3'"),
        (_with_class(value=1), "classes[1].value: 1 is already the label value of classes[0] ('casing'); label values must be unique"),
        (_with_class(color="red"), "classes[1].color: 'red' is not a colour of the form #rrggbb (e.g. #ff8800)"),
        (_with_class(color="#fff"), "classes[1].color: '#fff' is not a colour of the form #rrggbb"),
        (_with_class(color="#12345g"), "classes[1].color: '#12345g' is not a colour of the form #rrggbb"),
        (_with_class(color=None), "classes[1].color: None is not a colour of the form #rrggbb"),
        (_with_class(description=5), "classes[1].description: must be a string, not a number"),
    ],
)
def test_validation_errors_name_the_problem_and_its_json_path(data, message):
    with pytest.raises(ProfileError) as caught:
        Profile.from_dict(data)
    assert str(caught.value).startswith(message), str(caught.value)


def test_validation_in_python_constructors():
    with pytest.raises(ProfileError, match=r"^color: 'blue' is not a colour"):
        SegmentationClass("a", 1, "blue")
    with pytest.raises(ProfileError, match=r"^classes\[1\]\.value: 1 is already the label value of classes\[0\]"):
        Profile("p", (SegmentationClass("a", 1, "#000000"), SegmentationClass("b", 1, "#000000")))
    with pytest.raises(ProfileError, match=r"^classes\[0\]: must be a SegmentationClass, not dict"):
        Profile("p", ({"name": "a"},))
    with pytest.raises(ProfileError, match=r"^classes: must be a list of classes"):
        Profile("p", "abc")


def test_corrupt_json_names_line_and_column(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "format": "rwth-sam-profile",\n  "version": 1,\n  "name": "x",,\n}\n', encoding="utf-8")
    with pytest.raises(ProfileError) as caught:
        Profile.load(path)
    message = str(caught.value)
    assert message.startswith(f"Cannot load profile {path}: not valid JSON:")
    assert "at line 4, column 15" in message


def test_wrong_version_file_says_which_version_is_supported(tmp_path):
    path = tmp_path / "future.json"
    path.write_text(json.dumps({**valid_dict(), "version": 3}), encoding="utf-8")
    with pytest.raises(ProfileError, match=r"version 3 is not supported; this rwth-sam reads version 1 \(made by a newer"):
        Profile.load(path)


def test_invalid_file_message_names_the_file_and_path(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_with_class(color="#12")), encoding="utf-8")
    with pytest.raises(ProfileError, match=r"^Cannot load profile .*bad\.json: classes\[1\]\.color: '#12' is not a colour"):
        Profile.load(path)


def test_unreadable_files(tmp_path):
    with pytest.raises(ProfileError, match=r"Cannot load profile .*missing\.json: No such file"):
        Profile.load(tmp_path / "missing.json")
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ProfileError, match="not a UTF-8 text file"):
        Profile.load(binary)
    with pytest.raises(ProfileError, match=r"Cannot save the profile to .*: "):
        example().save(tmp_path / "no such folder" / "p.json")


def test_is_profile_file(tmp_path):
    good = example().save(tmp_path / "good.json")
    assert is_profile_file(good) and is_profile_file(str(good))
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "something else", "nested": {"format": PROFILE_FORMAT}}))
    assert not is_profile_file(other)
    plain = tmp_path / "plain.json"
    plain.write_text("[1, 2, 3]")
    assert not is_profile_file(plain)
    broken = tmp_path / "broken.json"
    broken.write_text('{"format": "rwth-sam-profile", "version": 1,,}')
    assert is_profile_file(broken), "a broken profile is still claimed, so opening it reports the problem"
    renamed = tmp_path / "good.txt"
    renamed.write_text(good.read_text())
    assert not is_profile_file(renamed)
    assert not is_profile_file(tmp_path / "missing.json")
    assert not is_profile_file(tmp_path)


# ----------------------------------------------------------------- example profiles


def test_example_profiles_ship_and_load():
    assert builtin_profiles_dir() == ROOT / "profiles"
    profiles = {profile.name: profile for profile in builtin_profiles()}
    assert set(profiles) == {"Li-ion cylindrical cell", "Abdominal CT"}
    for path in (ROOT / "profiles").glob("*.json"):
        assert is_profile_file(path)
        assert Profile.load(path).to_dict() == json.loads(path.read_text(encoding="utf-8")), f"{path.name} is not canonical"


def test_battery_profile_matches_the_phantom():
    profile = Profile.load(ROOT / "profiles" / "li_ion_cylindrical_cell.json")
    for value, name in phantom.CLASS_NAMES.items():
        assert profile.class_by_value(value).name == name
    for name in ("jelly roll", "current collector"):
        assert profile.class_by_name(name).value > max(phantom.CLASS_NAMES)


def test_abdominal_profile_uses_totalsegmentator_values():
    profile = Profile.load(ROOT / "profiles" / "abdominal_ct.json")
    for name in ("liver", "spleen", "kidney left", "kidney right", "pancreas", "stomach", "aorta"):
        assert profile.class_by_name(name) is not None, name
    if not TOTALSEG_LABELS.is_file():
        pytest.skip(f"TotalSegmentator label list not found at {TOTALSEG_LABELS}")
    totalseg = {int(value): name for value, name in json.loads(TOTALSEG_LABELS.read_text()).items()}
    for item in profile.classes:
        assert item.description == f"TotalSegmentator: {totalseg[item.value]}", item


def test_profiles_readme_examples(tmp_path, monkeypatch):
    import re

    text = (ROOT / "profiles" / "README.md").read_text(encoding="utf-8")
    example_json = re.search(r"```json\n(.*?)```", text, re.S).group(1)
    profile = Profile.from_dict(json.loads(example_json))
    assert [item.value for item in profile.classes] == [2, 3, 4]
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "profiles").symlink_to(ROOT / "profiles")
    namespace = {}
    exec(compile(code, "profiles/README.md", "exec"), namespace)
    assert Profile.load(tmp_path / "cracks.json") == namespace["mine"]
    assert namespace["profile"].next_free_value() == 9
