"""What rwth-sam relies on inside ``segment_anything``, and inside its two forks.

``segment_anything_hq`` (SAM-HQ) and ``mobile_sam`` (MobileSAM) are copies of ``segment_anything``
with the same module layout and the same internals (SAM-HQ's ``_process_batch`` takes one more
argument), so one fence serves the three packages; every entry of ``RELIES_ON`` holds for each of
``PACKAGES`` (``tests/test_upstream.py`` checks all three).
"""

from __future__ import annotations

import functools
import importlib

from rwth_sam.core.upstream import BatchHooks

PACKAGES = ("segment_anything", "segment_anything_hq", "mobile_sam")

RELIES_ON = {
    "SamAutomaticMaskGenerator._process_batch": (
        "called once per decoder batch by _process_crop: overridden (BatchHooks) for progress and cancel"
    ),
}


@functools.cache
def mask_generator_class(package: str) -> type:
    """The package's ``SamAutomaticMaskGenerator`` with ``BatchHooks`` (its masks are upstream's)."""
    if package not in PACKAGES:
        raise ValueError(f"{package} is not one of {', '.join(PACKAGES)}.")
    upstream = importlib.import_module(f"{package}.automatic_mask_generator").SamAutomaticMaskGenerator
    return type("SamAutomaticMaskGenerator", (BatchHooks, upstream), {"__module__": __name__, "package": package})
