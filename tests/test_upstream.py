"""The upstream internals rwth-sam relies on (``rwth_sam.core.upstream``), against the installed packages.

One check per ``RELIES_ON`` entry of each fence module (a new entry without a check fails), each
failing with "<package> changed <name> (<fence module> relies on it: <what for>): <what changed>".
Qt-free and fast: the checks read upstream's signatures and source, and build nothing but one
small model.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import textwrap
import types
from pathlib import Path

import pytest
import torch

from rwth_sam.core.upstream import sam2 as sam2_fence
from rwth_sam.core.upstream import segment_anything as sam1_fence

SRC = Path(__file__).resolve().parents[1] / "src" / "rwth_sam"
FENCE = SRC / "core" / "upstream"


def _tree(function) -> ast.AST:
    return ast.parse(textwrap.dedent(inspect.getsource(function)))


def _parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def _self_calls(function, method: str) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(_tree(function))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == method
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "self"
    ]


def _assigned_self_attributes(function) -> set[str]:
    return {
        target.attr
        for node in ast.walk(_tree(function))
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self"
    }


def _state_keys_assigned(function, state: str = "inference_state") -> set[str]:
    return {
        target.slice.value
        for node in ast.walk(_tree(function))
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Subscript)
        and isinstance(target.value, ast.Name)
        and target.value.id == state
        and isinstance(target.slice, ast.Constant)
    }


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)


def _calls_in_loop(function, method: str) -> bool:
    tree = _tree(function)
    for loop in ast.walk(tree):
        if isinstance(loop, ast.For):
            for node in ast.walk(loop):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == method
                    and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "self"
                ):
                    return True
    return False


# ---------------------------------------------------------------------------------------------
# segment_anything, segment_anything_hq, mobile_sam


def _sam1_process_batch(package: str) -> None:
    generator = importlib.import_module(f"{package}.automatic_mask_generator").SamAutomaticMaskGenerator
    _expect(hasattr(generator, "_process_batch"), "SamAutomaticMaskGenerator has no _process_batch")
    parameters = _parameters(generator._process_batch)
    _expect(
        parameters[:5] == ["self", "points", "im_size", "crop_box", "orig_size"], f"its parameters are {parameters}"
    )
    _expect(
        _calls_in_loop(generator._process_crop, "_process_batch"),
        "_process_crop no longer calls self._process_batch once per batch",
    )
    hooked = sam1_fence.mask_generator_class(package)
    _expect(issubclass(hooked, generator), "the fence's generator is not a subclass of upstream's")


SAM1_CHECKS = {"SamAutomaticMaskGenerator._process_batch": _sam1_process_batch}


# ---------------------------------------------------------------------------------------------
# sam2


def _bb_feat_sizes() -> None:
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    _expect("_bb_feat_sizes" in _assigned_self_attributes(SAM2ImagePredictor.__init__), "__init__ no longer sets it")
    for method in (SAM2ImagePredictor.set_image, SAM2ImagePredictor.set_image_batch):
        _expect("self._bb_feat_sizes" in inspect.getsource(method), f"{method.__name__} no longer reads it")
    fake = types.SimpleNamespace(model=types.SimpleNamespace(image_size=256))
    sam2_fence.fit_feature_sizes(fake)
    _expect(fake._bb_feat_sizes == [(64, 64), (32, 32), (16, 16)], f"sizes for 256 pixels: {fake._bb_feat_sizes}")


def _transforms() -> None:
    from sam2.sam2_image_predictor import SAM2ImagePredictor
    from sam2.utils.transforms import SAM2Transforms

    _expect("_transforms" in _assigned_self_attributes(SAM2ImagePredictor.__init__), "__init__ no longer sets it")
    _expect("SAM2Transforms(" in inspect.getsource(SAM2ImagePredictor.__init__), "it is no longer a SAM2Transforms")
    for method, expected in [
        ("__call__", ["self", "x"]),
        ("transform_coords", ["self", "coords", "normalize", "orig_hw"]),
        ("transform_boxes", ["self", "boxes", "normalize", "orig_hw"]),
        ("postprocess_masks", ["self", "masks", "orig_hw"]),
    ]:
        found = _parameters(getattr(SAM2Transforms, method))
        _expect(found == expected, f"SAM2Transforms.{method} takes {found}, not {expected}")


def _min_mask_region_area() -> None:
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    init = inspect.getsource(SAM2AutomaticMaskGenerator.__init__)
    _expect("max_hole_area=min_mask_region_area" in init, "it is no longer the image predictor's max_hole_area")
    _expect("max_sprinkle_area=min_mask_region_area" in init, "it is no longer the image predictor's max_sprinkle_area")
    for name, member in vars(SAM2AutomaticMaskGenerator).items():
        if inspect.isfunction(member) and name != "__init__":
            _expect("min_mask_region_area" not in inspect.getsource(member), f"{name} now uses it")


def _sam2_process_batch() -> None:
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    parameters = _parameters(SAM2AutomaticMaskGenerator._process_batch)
    _expect(
        parameters[:5] == ["self", "points", "im_size", "crop_box", "orig_size"], f"its parameters are {parameters}"
    )
    _expect(
        _calls_in_loop(SAM2AutomaticMaskGenerator._process_crop, "_process_batch"),
        "_process_crop no longer calls self._process_batch once per batch",
    )


def _build_video_predictor() -> None:
    video = sam2_fence.build_video_predictor("configs/sam2.1/sam2.1_hiera_t.yaml", image_size=256)
    _expect(type(video) is sam2_fence.MemoryVideoPredictor, f"it built a {type(video).__qualname__}")
    _expect(video.image_size == 256, f"the image size override gave {video.image_size}")
    _expect(isinstance(video.memory_attention, sam2_fence.CastingMemoryAttention), "memory attention not cast")


def _video_init() -> None:
    from sam2.build_sam import build_sam2_video_predictor
    from sam2.sam2_video_predictor import SAM2VideoPredictor

    found = _assigned_self_attributes(SAM2VideoPredictor.__init__)
    expected = {
        "fill_hole_area",
        "non_overlap_masks",
        "clear_non_cond_mem_around_input",
        "add_all_frames_to_correct_as_cond",
    }
    _expect(found == expected, f"__init__ sets {sorted(found)}, not {sorted(expected)}")
    source = inspect.getsource(build_sam2_video_predictor)
    for override in ("++model.fill_hole_area=8", "++model.binarize_mask_from_pts_for_mem_enc=true"):
        _expect(override in source, f"build_sam2_video_predictor no longer gives {override}")


def _init_state() -> None:
    from sam2.sam2_video_predictor import SAM2VideoPredictor

    upstream = _state_keys_assigned(SAM2VideoPredictor.init_state)
    fake = types.SimpleNamespace(device=torch.device("cpu"))
    ours = set(sam2_fence.MemoryVideoPredictor.init_state(fake, [], 8, 8, lambda index: [])) - {
        sam2_fence.FRAME_FEATURES,
        "rwth_sam_position_encodings",
    }
    _expect(ours == upstream, f"its state keys differ: upstream only {upstream - ours}, here only {ours - upstream}")
    calls = {
        ast.unparse(node.func)
        for node in ast.walk(_tree(SAM2VideoPredictor.init_state))
        if isinstance(node, ast.Call) and not ast.unparse(node.func).startswith("torch.")
    }
    expected = {"load_video_frames", "len", "OrderedDict", "self._get_image_feature"}
    _expect(calls == expected, f"it calls {sorted(calls)}, not only {sorted(expected)}")


def _get_image_feature() -> None:
    from sam2.sam2_video_predictor import SAM2VideoPredictor

    parameters = _parameters(SAM2VideoPredictor._get_image_feature)
    _expect(parameters == ["self", "inference_state", "frame_idx", "batch_size"], f"its parameters are {parameters}")
    source = inspect.getsource(SAM2VideoPredictor._get_image_feature)
    _expect('image, backbone_out = inference_state["cached_features"].get(' in source, "it reads its cache otherwise")
    for key in ("backbone_fpn", "vision_pos_enc"):
        _expect(f'backbone_out["{key}"]' in source, f"it no longer reads backbone_out[{key!r}]")
    for name, member in vars(SAM2VideoPredictor).items():
        if not inspect.isfunction(member):
            continue
        for node in ast.walk(_tree(member)):
            value = getattr(node, "value", None)
            if (
                isinstance(node, ast.Assign)
                and isinstance(value, ast.Call)
                and ast.unparse(value.func) == "self._get_image_feature"
            ):
                target = node.targets[0]
                first = target.elts[0] if isinstance(target, ast.Tuple) else target
                _expect(isinstance(first, ast.Name) and first.id == "_", f"{name} now uses the frame image it returns")


def _propagate_in_video() -> None:
    import sam2.sam2_video_predictor as video_module
    from sam2.sam2_video_predictor import SAM2VideoPredictor

    parameters = _parameters(SAM2VideoPredictor.propagate_in_video)
    expected = ["self", "inference_state", "start_frame_idx", "max_frame_num_to_track", "reverse"]
    _expect(parameters == expected, f"its parameters are {parameters}")
    _expect(hasattr(video_module, "tqdm"), "sam2.sam2_video_predictor no longer imports tqdm")
    bars = [
        node
        for node in ast.walk(_tree(SAM2VideoPredictor.propagate_in_video))
        if isinstance(node, ast.For) and isinstance(node.iter, ast.Call) and ast.unparse(node.iter.func) == "tqdm"
    ]
    _expect(len(bars) == 1, "its frames are no longer one loop over tqdm(...)")


def _output_dict_per_obj() -> None:
    from sam2.sam2_video_predictor import SAM2VideoPredictor

    source = inspect.getsource(SAM2VideoPredictor._obj_id_to_idx)
    _expect('inference_state["output_dict_per_obj"][obj_idx] = {' in source, "it is no longer a dict per object index")
    for key in ("cond_frame_outputs", "non_cond_frame_outputs"):
        _expect(f'"{key}": {{}}' in source, f"an object's outputs have no {key!r} any more")
    run = inspect.getsource(SAM2VideoPredictor._run_single_frame_inference)
    _expect('"object_score_logits": object_score_logits' in run, "a frame's output has no object_score_logits")
    state = {"obj_ids": [7], "output_dict_per_obj": {0: {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}}}
    state["output_dict_per_obj"][0]["non_cond_frame_outputs"][3] = {"object_score_logits": torch.tensor([[1.5]])}
    scores = sam2_fence.MemoryVideoPredictor.object_scores(None, state, 3)
    _expect(scores == {7: 1.5}, f"object_scores read {scores}")


def _memory_attention_forward() -> None:
    from sam2.modeling.memory_attention import MemoryAttention
    from sam2.modeling.sam2_base import SAM2Base

    expected = ["self", "curr", "memory", "curr_pos", "memory_pos", "num_obj_ptr_tokens"]
    found = _parameters(MemoryAttention.forward)
    _expect(found == expected, f"its parameters are {found}")
    _expect(_parameters(sam2_fence.CastingMemoryAttention.forward) == expected, "the subclass's differ from it")
    calls = _self_calls(SAM2Base._prepare_memory_conditioned_features, "memory_attention")
    keywords = [sorted(keyword.arg for keyword in call.keywords) for call in calls]
    _expect(
        keywords == [sorted(expected[1:])] and not any(call.args for call in calls),
        f"SAM2Base calls it with {keywords}",
    )


SAM2_CHECKS = {
    "SAM2ImagePredictor._bb_feat_sizes": _bb_feat_sizes,
    "SAM2ImagePredictor._transforms": _transforms,
    "SAM2AutomaticMaskGenerator.min_mask_region_area": _min_mask_region_area,
    "SAM2AutomaticMaskGenerator._process_batch": _sam2_process_batch,
    "build_sam2_video_predictor": _build_video_predictor,
    "SAM2VideoPredictor.__init__": _video_init,
    "SAM2VideoPredictor.init_state": _init_state,
    "SAM2VideoPredictor._get_image_feature": _get_image_feature,
    "SAM2VideoPredictor.propagate_in_video": _propagate_in_video,
    "inference_state['output_dict_per_obj']": _output_dict_per_obj,
    "MemoryAttention.forward": _memory_attention_forward,
}


# ---------------------------------------------------------------------------------------------
# the tests


def _check(package: str, fence, name: str, check, *args) -> None:
    try:
        check(*args)
    except (AssertionError, AttributeError, TypeError, OSError) as error:
        pytest.fail(f"{package} changed {name} ({fence.__name__} relies on it: {fence.RELIES_ON[name]}): {error}")


@pytest.mark.parametrize("fence, checks", [(sam1_fence, SAM1_CHECKS), (sam2_fence, SAM2_CHECKS)], ids=["sam1", "sam2"])
def test_every_internal_relied_on_has_a_check(fence, checks):
    assert set(checks) == set(fence.RELIES_ON)


@pytest.mark.parametrize("package", sam1_fence.PACKAGES)
@pytest.mark.parametrize("name", list(SAM1_CHECKS))
def test_segment_anything_internal(package, name):
    _check(package, sam1_fence, name, SAM1_CHECKS[name], package)


@pytest.mark.parametrize("name", list(SAM2_CHECKS))
def test_sam2_internal(name):
    _check("sam2", sam2_fence, name, SAM2_CHECKS[name])


def test_a_changed_internal_is_named_in_the_failure():
    def changed():
        raise AssertionError("its parameters are ['self', 'state']")

    with pytest.raises(pytest.fail.Exception) as failure:
        _check("sam2", sam2_fence, "SAM2VideoPredictor._get_image_feature", changed)
    assert str(failure.value).startswith(
        "sam2 changed SAM2VideoPredictor._get_image_feature (rwth_sam.core.upstream.sam2 relies on it: overridden by "
    )
    assert str(failure.value).endswith("its parameters are ['self', 'state']")


def _private_names() -> set[str]:
    """The upstream attributes and state keys the fences rely on (dunders and public names aside)."""
    names = set()
    for fence in (sam1_fence, sam2_fence):
        for name in fence.RELIES_ON:
            last = name.replace("[", ".").replace("]", "").split(".")[-1].strip("'\"")
            if (last.startswith("_") and not last.startswith("__")) or "[" in name:
                names.add(last)
    return names


def test_upstream_internals_are_touched_only_inside_the_fence():
    """Outside ``core/upstream``, no source reads a private attribute of anything but ``self`` under one
    of the fenced names, subscripts upstream state with them, or imports unittest."""
    names = _private_names()
    assert {"_bb_feat_sizes", "_transforms", "_process_batch", "_get_image_feature", "output_dict_per_obj"} <= names
    offences = []
    for path in SRC.rglob("*.py"):
        if FENCE in path.parents:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in names
                and not (isinstance(node.value, ast.Name) and node.value.id == "self")
            ):
                offences.append(f"{path.relative_to(SRC)}:{node.lineno} .{node.attr}")
            if isinstance(node, ast.Constant) and node.value in names:
                offences.append(f"{path.relative_to(SRC)}:{node.lineno} {node.value!r}")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                offences += [
                    f"{path.relative_to(SRC)}:{node.lineno} imports {m}" for m in modules if m.startswith("unittest")
                ]
    assert not offences, offences
