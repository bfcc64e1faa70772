"""The README's Python example runs as written (random weights stand in for the download).

The stand-in is the reduced SAM 2.1-t: the example is the same for every family, and MobileSAM's
encoder made this the slowest test of the suite (25 s); both families' paths are tested elsewhere."""

from __future__ import annotations

import re
from pathlib import Path

import rwth_sam

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_api_example_runs(monkeypatch, sam2_tiny):
    text = README.read_text()
    section = text[text.index("## Python API") : text.index("## Layout")]
    code = "\n".join(re.findall(r"```python\n(.*?)```", section, re.S))
    monkeypatch.setattr(
        rwth_sam, "load_model", lambda name, **kwargs: sam2_tiny if name == "mobile_sam_vit_t" else None
    )
    namespace = {}
    exec(compile(code, str(README), "exec"), namespace)
    labels, refined, result = namespace["labels"], namespace["refined"], namespace["result"]
    assert (labels[16] == 1).sum() == refined.mask.sum() > 0
    assert result.finished == list(range(12, 21)) and labels[12:21].any() and not labels[21:].any()
    assert namespace["objects"].shape == (256, 256)
