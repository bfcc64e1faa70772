"""3D propagation: rwth-sam's ``propagate`` against the source project's pipeline, SAM 2.1 tiny.

Source pipeline (what the 3D Slicer plugin does): write every slice of the volume, as the model sees
it, as a JPEG file into a temporary folder, ``init_state(folder)`` on the upstream video predictor,
``add_new_mask`` on the middle slice, ``propagate_in_video`` forward, then in reverse.
rwth-sam: ``propagate(segmenter, 0, start, end, {middle: {1: mask}})`` (frames made in memory, one at
a time, only for the range; image features through the segmenter's embedding cache).

Each measurement runs in a fresh subprocess (random weights, seeded: the compute is measured) and
reports wall time end to end (from the volume in memory to the masks in numpy, model building
excluded) and peak memory: process RSS sampled every 2 ms in a thread, minus the RSS just before the
run, plus ``torch.cuda.max_memory_allocated`` on CUDA. Cases:

* ``source-32``: 32-slice volume, range 0..31, the source pipeline;
* ``plugin-32``: the same, rwth-sam with nothing embedded yet (cold);
* ``plugin-32-warm``: the same, with the range embedded beforehand, as the widget does in the
  background once the range is set, while the user draws boxes and refines the middle slice
  (``embed_ahead_s``: that embedding's time, not part of the wall time);
* ``plugin-128``: 128-slice volume, range 48..79 (32 slices): its peak should be within 10 % of
  ``plugin-32``'s (memory must not grow with slices outside the range).

    python bench/propagation.py [--image-size 1024] [--device cpu|cuda] [--repeats 1] [--profile]

``--profile`` instead runs ``plugin-32`` once with a timer around each part of the model (encoder,
memory attention, memory encoder, prompt encoder, mask decoder) and prints each part's share.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import warnings

warnings.filterwarnings("ignore")


def _rss_sampler():
    import psutil

    process = psutil.Process()
    state = {"peak": process.memory_info().rss, "run": True}

    def sample():
        while state["run"]:
            state["peak"] = max(state["peak"], process.memory_info().rss)
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    return process, state, thread


def _time_parts(parts: dict) -> dict:
    """Wrap each module's forward with a timer; returns {name: seconds}, filled as they run."""
    seconds = dict.fromkeys(parts, 0.0)
    for name, module in parts.items():

        def timed(*args, _forward=module.forward, _name=name, **kwargs):
            start = time.perf_counter()
            try:
                return _forward(*args, **kwargs)
            finally:
                seconds[_name] += time.perf_counter() - start

        module.forward = timed
    return seconds


def one(case: str, image_size: int, device: str, profile: bool = False) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    import rwth_sam
    from rwth_sam.core.models import sam2_spec
    from rwth_sam.core.phantom import VOID, battery_phantom
    from rwth_sam.core.propagation import propagate, video_predictor

    name = f"sam2.1_hiera_tiny_{image_size}"
    rwth_sam.register_model(
        sam2_spec(name, name, "configs/sam2.1/sam2.1_hiera_t.yaml", None, image_size=image_size), replace=True
    )
    torch.manual_seed(0)
    predictor = rwth_sam.load_model(name, pretrained=False, device=device)
    depth = 128 if case.endswith("128") else 32
    start, end = (48, 79) if depth == 128 else (0, 31)
    middle = (start + end) // 2
    image, labels = battery_phantom(shape=(depth, 256, 256))
    segmenter = rwth_sam.Segmenter(predictor, image)
    mask = labels[middle] == VOID
    video = video_predictor(predictor)  # built once per predictor: model building is not timed
    parts = None
    if profile:  # timers on the CPU side (on CUDA they see launches, not kernels)
        parts = _time_parts({
            "encoder": predictor.model.image_encoder, "memory attention": video.memory_attention,
            "memory encoder": video.memory_encoder, "prompt encoder": video.sam_prompt_encoder,
            "mask decoder": video.sam_mask_decoder,
        })  # fmt: skip
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    process, state, thread = _rss_sampler()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base_gpu = torch.cuda.memory_allocated() if device == "cuda" else 0
    base = process.memory_info().rss
    state["peak"] = base
    embed_ahead = None
    if case.endswith("warm"):
        t0 = time.perf_counter()
        for index in range(start, end + 1):
            segmenter.embed(segmenter.plane(0, index))
        sync()
        embed_ahead = time.perf_counter() - t0
        base, state["peak"] = process.memory_info().rss, process.memory_info().rss
    thread.start()
    t0 = time.perf_counter()
    if case.startswith("plugin"):
        result = propagate(segmenter, 0, start, end, {middle: {1: mask}})
        masks = {i: result.masks[i][1] for i in result.finished}
    else:
        with tempfile.TemporaryDirectory() as folder:
            for n in range(depth):
                Image.fromarray(segmenter.slice_rgb(segmenter.plane(0, n))).save(os.path.join(folder, f"{n:05d}.jpg"), quality=100)
            masks = {}
            with torch.inference_mode():
                offload = device == "cuda"
                vstate = video.init_state(folder, offload_video_to_cpu=offload, offload_state_to_cpu=offload)
                video.add_new_mask(vstate, middle, 1, mask)
                for reverse in (False, True):
                    for f, _, logits in video.propagate_in_video(vstate, start_frame_idx=middle, reverse=reverse):
                        masks[f] = (logits[0, 0] > 0).cpu().numpy()
            del vstate
    sync()
    wall = time.perf_counter() - t0
    state["run"] = False
    thread.join()
    out = {
        "case": case, "image_size": image_size, "device": device, "slices": len(masks),
        "wall_s": round(wall, 3), "peak_rss_mb": round((state["peak"] - base) / 2**20, 1),
        "mean_area": float(np.mean([m.sum() for m in masks.values()])),
    }
    if embed_ahead is not None:
        out["embed_ahead_s"] = round(embed_ahead, 3)
    if parts is not None:
        out["share_of_wall"] = {name: round(seconds / wall, 3) for name, seconds in parts.items()}
    if device == "cuda":
        out["peak_gpu_mb"] = round((torch.cuda.max_memory_allocated() - base_gpu) / 2**20, 1)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="the model parts' shares of one plugin-32 run")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.profile:
        print(json.dumps(one("plugin-32", args.image_size, args.device, profile=True)))
        return
    if args.one:
        print(json.dumps(one(args.one, args.image_size, args.device)))
        return
    rows = []
    for _ in range(args.repeats):
        for case in ("source-32", "plugin-32", "plugin-32-warm", "plugin-128"):
            command = [sys.executable, __file__, "--one", case, "--image-size", str(args.image_size), "--device", args.device]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(output.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    best = {}
    for row in rows:
        if row["case"] not in best or row["wall_s"] < best[row["case"]]["wall_s"]:
            best[row["case"]] = row
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, device {args.device}")
    source = best["source-32"]["wall_s"]
    print(f"speed-up source/plugin (32 slices), cold: {source / best['plugin-32']['wall_s']:.2f}x, "
          f"range embedded ahead: {source / best['plugin-32-warm']['wall_s']:.2f}x")
    for k in ("peak_rss_mb", "peak_gpu_mb"):
        if k in best["plugin-32"]:
            a, b = best["plugin-32"][k], best["plugin-128"][k]
            print(f"{k}: plugin-32 {a}, plugin-128 (range 32) {b}, source-32 {best['source-32'][k]}; 128/32 = {b / max(a, 1e-9):.3f}")


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    main()
