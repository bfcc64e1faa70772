"""Shared by the benchmarks: timing rwth-sam against upstream fairly, and recording what it ran on."""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
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


def make_timer(device: torch.device):
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def timed(fn):
        sync()
        start = time.perf_counter()
        result = fn()
        sync()
        return time.perf_counter() - start, result

    return timed


def interleaved(timed, plugin_fn, upstream_fn, repeats: int, warm_up: bool = True):
    """One warm-up call of each (unless done already), then ``repeats`` interleaved pairs; returns
    both lists of seconds.

    Pairs alternate their order (A B, B A, A B, ...) so that neither side always runs first, e.g. right
    after the other has filled the caches or released its memory.
    """
    if warm_up:
        plugin_fn()
        upstream_fn()
    plugin_times, upstream_times = [], []
    gc.collect()
    gc.disable()
    try:
        for i in range(repeats):
            for side in ("plugin", "upstream") if i % 2 == 0 else ("upstream", "plugin"):
                if side == "plugin":
                    plugin_times.append(timed(plugin_fn)[0])
                else:
                    upstream_times.append(timed(upstream_fn)[0])
    finally:
        gc.enable()
    return plugin_times, upstream_times


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_report(path: str, report: dict) -> None:
    """Write a benchmark's JSON report, with the time it finished, the command that ran it and,
    beside ``machine_info``'s load average at the start, the one at the end."""
    report = {"finished": utc_now(), "command": " ".join([os.path.basename(sys.executable), *sys.argv]), **report}
    if hasattr(os, "getloadavg"):
        report["machine"] = {**report["machine"], "load_average_at_end": os.getloadavg()}
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {path}")
