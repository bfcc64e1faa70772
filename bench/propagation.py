"""3D propagation: rwth-sam's ``propagate`` against the source project's pipeline, SAM 2.1 tiny.

Source pipeline, as the Slicer-SAM 2 plugin's server runs it (``infer_SAM21_slicer.py`` of
bowang-lab/MedSAMSlicer, with the slices written as JPEG files as its first version did): write every
slice of the volume, as the model sees it, as a JPEG file into a temporary folder; then for each
object on its own: ``init_state(folder)`` on the upstream video predictor, ``add_new_mask`` on the
middle slice, ``propagate_in_video`` forward, ``reset_state``, ``add_new_mask`` again,
``propagate_in_video`` in reverse, ``reset_state``. On CUDA inside ``torch.autocast("cuda",
bfloat16)``, as that server does (on the CPU it runs in float32, as the plugin does everywhere).
rwth-sam: ``propagate(segmenter, 0, start, end, {middle: {1: mask, 2: ...}})``, all objects at once
(frames made in memory, one at a time, only for the range; image features through the segmenter's
embedding cache). ``--objects`` (1 and 3 by default: central void, casing, cathode of the phantom)
sets how many objects the speed cases track.

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
  ``plugin-32``'s (memory must not grow with slices outside the range);
* ``source-startup``: what the source's server does before that pipeline on every request: start a
  new Python process that imports torch and sam2, builds the video predictor and loads the
  checkpoint (here a random one, written beforehand; the model's cost to load is the same);
* ``source-32-correction`` and ``plugin-32-correction``: after a first propagation (not timed),
  the correction loop, one object: a mask for slice 24 is added and propagated forward from it.
  The source side adds it to its kept inference state, as its "improve" step does (upstream keeps
  only the last frame's features there, so it encodes slices 24..31 again), and is timed for the
  forward pass only (that step also propagates backward again); rwth-sam re-propagates with the
  embeddings cached by the first run.

Last, plugin-32 and plugin-128 run once more with glibc's mmap threshold fixed
(``MALLOC_MMAP_THRESHOLD_``) for their peak RSS: without it, the larger temporaries freed while
making the 128-slice phantom raise the threshold, and the heap then keeps more of the run's memory.

    python bench/propagation.py [--image-size 1024] [--device cpu|cuda] [--repeats 1] [--objects 1 3] [--profile]

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

CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
# what the source's server runs in the new process it starts per request, before any slice
SERVER_START = """
import sys
import torch
from sam2.build_sam import build_sam2_video_predictor
config, checkpoint, device, size = sys.argv[1:]
build_sam2_video_predictor(config, checkpoint, device=device, hydra_overrides_extra=[f"++model.image_size={size}"])
"""


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


def one(case: str, image_size: int, device: str, objects: int = 1, profile: bool = False) -> dict:
    import numpy as np
    import torch
    from PIL import Image
    from sam2.sam2_video_predictor import SAM2VideoPredictor

    import rwth_sam
    from rwth_sam.core.models.builtin import sam2_spec
    from rwth_sam.core.phantom import CAN, CATHODE, VOID, battery_phantom
    from rwth_sam.core.tasks.propagation import propagate

    name = f"sam2.1_hiera_tiny_{image_size}"
    rwth_sam.register_model(sam2_spec(name, name, CONFIG, None, image_size=image_size), replace=True)
    torch.manual_seed(0)
    predictor = rwth_sam.load_model(name, pretrained=False, device=device)
    depth = 128 if case.endswith("128") else 32
    start, end = (48, 79) if depth == 128 else (0, 31)
    middle = (start + end) // 2
    image, labels = battery_phantom(shape=(depth, 256, 256))
    segmenter = rwth_sam.Segmenter(predictor, image)
    masks = {k: labels[middle] == cls for k, cls in enumerate((VOID, CAN, CATHODE)[:objects], start=1)}
    video = predictor.video_predictor()  # built once per predictor: model building is not timed
    if case == "source-startup":
        return _server_start(video, image_size, device)
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
    fix = middle + 8  # the correction cases: the user fixes this slice and propagates on from it
    fixed = {middle: {1: masks[1]}, fix: {1: labels[fix] == VOID}}
    folder = tempfile.TemporaryDirectory()
    source = {}

    def source_run():
        for n in range(depth):
            Image.fromarray(segmenter.slice_rgb(segmenter.plane(0, n))).save(
                os.path.join(folder.name, f"{n:05d}.jpg"), quality=100
            )
        offload = device == "cuda"
        found = {}
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
            for k, mask in masks.items():  # the source tracks one object at a time
                source["state"] = state = SAM2VideoPredictor.init_state(  # upstream's own, from the folder
                    video, folder.name, offload_video_to_cpu=offload, offload_state_to_cpu=offload
                )
                for reverse in (False, True):
                    video.add_new_mask(state, middle, 1, mask)
                    for f, one_mask in _source_masks(video, state, middle, (reverse,)).items():
                        found[f, k] = one_mask
                    video.reset_state(state)
        return found

    def source_correction():  # upstream keeps the state, but only the last frame's features
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
            video.add_new_mask(source["state"], fix, 1, fixed[fix][1])
            return _source_masks(video, source["state"], fix, (False,))

    def plugin_run():
        result = propagate(segmenter, 0, start, end, {middle: masks})
        return {(i, k): result.masks[i][k] for i in result.finished for k in masks}

    def plugin_correction():
        result = propagate(segmenter, 0, start, end, fixed, direction="forward", from_index=fix)
        return {i: result.masks[i][1] for i in result.finished if i >= fix}

    runs = {"source": source_run, "plugin": plugin_run}
    side = case.split("-")[0]
    with torch.inference_mode():
        if case.endswith("correction"):
            runs[side]()  # the first propagation, not timed (nor in the peak memory)
            base = state["peak"] = process.memory_info().rss
            runs = {"source": source_correction, "plugin": plugin_correction}
        thread.start()
        t0 = time.perf_counter()
        found = runs[side]()
    sync()
    wall = time.perf_counter() - t0
    state["run"] = False
    thread.join()
    source.clear()
    folder.cleanup()
    out = {
        "case": case,
        "objects": len(masks),
        "image_size": image_size,
        "device": device,
        "masks": len(found),
        "wall_s": round(wall, 3),
        "peak_rss_mb": round((state["peak"] - base) / 2**20, 1),
        "mean_area": float(np.mean([m.sum() for m in found.values()])),
    }
    if embed_ahead is not None:
        out["embed_ahead_s"] = round(embed_ahead, 3)
    if parts is not None:
        out["share_of_wall"] = {name: round(seconds / wall, 3) for name, seconds in parts.items()}
    if device == "cuda":
        out["peak_gpu_mb"] = round((torch.cuda.max_memory_allocated() - base_gpu) / 2**20, 1)
    return out


def _server_start(video, image_size: int, device: str) -> dict:
    """Wall time of a new process that loads the model as the source's server does per request."""
    import torch

    with tempfile.TemporaryDirectory() as folder:
        checkpoint = os.path.join(folder, "sam2.1_hiera_tiny.pt")
        torch.save({"model": video.state_dict()}, checkpoint)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", SERVER_START, CONFIG, checkpoint, device, str(image_size)], check=True)
        wall = time.perf_counter() - t0
    return {
        "case": "source-startup",
        "objects": 0,
        "image_size": image_size,
        "device": device,
        "wall_s": round(wall, 3),
    }


def _source_masks(video, state, from_frame: int, directions) -> dict:
    """Upstream ``propagate_in_video`` from ``from_frame`` in each direction; masks by frame."""
    masks = {}
    for reverse in directions:
        for f, _, logits in video.propagate_in_video(state, start_frame_idx=from_frame, reverse=reverse):
            masks[f] = (logits[0, 0] > 0).cpu().numpy()
    return masks


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--objects", type=int, nargs="+", default=[1, 3], choices=[1, 2, 3])
    parser.add_argument("--profile", action="store_true", help="the model parts' shares of one plugin-32 run")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.profile:
        print(json.dumps(one("plugin-32", args.image_size, args.device, profile=True)))
        return
    if args.one:
        print(json.dumps(one(args.one, args.image_size, args.device, args.objects[0])))
        return

    def run(case: str, objects: int = 1, env=None) -> dict:
        command = [
            sys.executable,
            __file__,
            "--one",
            case,
            "--image-size",
            str(args.image_size),
            "--device",
            args.device,
        ]
        command += ["--objects", str(objects)]
        output = subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout
        row = json.loads(output.strip().splitlines()[-1])
        print(json.dumps(row), flush=True)
        return row

    object_counts = sorted({1, *args.objects})  # the memory and correction cases track one object
    rows = []
    for _ in range(args.repeats):
        for objects in object_counts:
            rows += [run(case, objects) for case in SPEED_CASES]
        rows += [run(case) for case in ("plugin-128", "source-32-correction", "plugin-32-correction", "source-startup")]
    # glibc raises its mmap threshold after large frees (making the 128-slice phantom frees larger
    # temporaries), after which the heap keeps more: a fixed threshold compares the runs themselves
    fixed = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    neutral = {case: run(case, env=fixed)["peak_rss_mb"] for case in ("plugin-32", "plugin-128")}
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, device {args.device}")
    report(rows, neutral, object_counts)


SPEED_CASES = ("source-32", "plugin-32", "plugin-32-warm")


def _key(case: str, objects: int) -> str:
    return f"{case} x{objects}" if objects > 1 else case


def report(rows: list[dict], neutral: dict[str, float], object_counts: list[int]) -> None:
    """Print the speed-ups and memory ratios from the fastest row of each case."""
    best = {}
    for row in rows:
        key = _key(row["case"], row["objects"])
        if key not in best or row["wall_s"] < best[key]["wall_s"]:
            best[key] = row
    startup = best["source-startup"]["wall_s"]
    for objects in object_counts:
        source, cold, warm = (best[_key(case, objects)]["wall_s"] for case in SPEED_CASES)
        print(
            f"speed-up source/plugin (32 slices, {objects} object{'s' * (objects > 1)}), cold: {source / cold:.2f}x, "
            f"range embedded ahead: {source / warm:.2f}x; with the source server's start per request "
            f"({startup:.1f} s): {(startup + source) / cold:.2f}x and {(startup + source) / warm:.2f}x"
        )
    correction = best["source-32-correction"]["wall_s"] / best["plugin-32-correction"]["wall_s"]
    print(f"speed-up source/plugin, a correction re-propagated forward from slice 24: {correction:.2f}x")
    for k in ("peak_rss_mb", "peak_gpu_mb"):
        if k in best["plugin-32"]:
            a, b = best["plugin-32"][k], best["plugin-128"][k]
            print(
                f"{k}: plugin-32 {a}, plugin-128 (range 32) {b}, source-32 {best['source-32'][k]}; 128/32 = {b / max(a, 1e-9):.3f}"
            )
    a, b = neutral["plugin-32"], neutral["plugin-128"]
    print(f"peak_rss_mb with a fixed mmap threshold: plugin-32 {a}, plugin-128 {b}; 128/32 = {b / max(a, 1e-9):.3f}")


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    main()
