"""What a benchmark ran on, recorded with its results: machine, device, load and package versions."""

from __future__ import annotations

import importlib.util
import os
import platform
from importlib.metadata import PackageNotFoundError, version

import torch

UPSTREAM_MODULES = ["rwth_sam", "segment_anything", "segment_anything_hq", "mobile_sam", "sam2"]


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def machine_info(device: torch.device, packages: list[str]) -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "packages": {name: package_version(name) for name in packages},
        # where the upstream packages come from (versions are None when put on PYTHONPATH by hand)
        "imported_from": {
            module: getattr(importlib.util.find_spec(module), "origin", None) for module in UPSTREAM_MODULES
        },
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = os.getloadavg()
    return info
