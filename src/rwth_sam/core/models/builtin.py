"""Built-in registry entries: SAM, SAM-HQ, MobileSAM and SAM 2.1, with their official checkpoints.

Sizes and SHA-256 sums are those of the files at the official URLs (Git LFS pointers of the
Hugging Face copies and published registries agree on them).
"""

from __future__ import annotations

import importlib
import warnings
from functools import partial

from rwth_sam.core.models.predictors.sam1 import MobileSamPredictor, SamHqPredictor, SamPredictor
from rwth_sam.core.models.predictors.sam2 import Sam2Predictor
from rwth_sam.core.models.spec import ModelSpec
from rwth_sam.core.models.weights import Weights

# Everything the built-in families import when a model is built, predicts or generates masks.
UPSTREAM_MODULES = (
    "torchvision.ops",
    "timm",
    "segment_anything", "segment_anything.automatic_mask_generator",
    "segment_anything_hq", "segment_anything_hq.automatic_mask_generator",
    "mobile_sam", "mobile_sam.automatic_mask_generator",
    "sam2.build_sam", "sam2.sam2_image_predictor", "sam2.sam2_video_predictor", "sam2.automatic_mask_generator",
    "rwth_sam.core.upstream.segment_anything", "rwth_sam.core.upstream.sam2",
)  # fmt: skip


def import_upstream_packages() -> None:
    """Import the model packages now, on the calling thread, rather than at the first click.

    An import in a worker thread holds the GIL for up to 160 ms at a time (2 s in all): done there,
    the GUI froze again and again while the first model loaded. ``python -m rwth_sam`` calls this
    before napari starts, the widget when it opens (a no-op once imported). Their own deprecation
    notices (timm's layout, MobileSAM re-registering timm models) are nothing a user can act on.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message="Overwriting tiny_vit", category=UserWarning)
        for name in UPSTREAM_MODULES:
            importlib.import_module(name)


BUILTIN_MODELS: list[ModelSpec] = []  # registered by the registry at its first use

_FB = "https://dl.fbaipublicfiles.com"
_HQ = "https://huggingface.co/lkeab/hq-sam/resolve/main"


def _build_sam(variant: str):
    from segment_anything import sam_model_registry

    return sam_model_registry[variant]()


def _build_sam_hq(variant: str):
    from segment_anything_hq import sam_model_registry

    return sam_model_registry[variant]()


def _build_mobile_sam():
    from mobile_sam import sam_model_registry

    return sam_model_registry["vit_t"]()


def build_sam2(config: str, image_size: int = 1024):
    """A SAM 2 model from its packaged hydra config; ``image_size`` < 1024 gives a cheaper model for tests."""
    from sam2.build_sam import build_sam2 as upstream_build

    overrides = [] if image_size == 1024 else [f"++model.image_size={image_size}"]
    return upstream_build(config, None, device="cpu", hydra_overrides_extra=overrides)


def sam2_spec(name: str, title: str, config: str, weights: Weights | None, image_size: int = 1024):
    """A SAM 2 registry entry; tests and benchmarks use it for reduced-resolution variants."""
    return ModelSpec(
        name=name,
        family="SAM 2.1",
        title=title,
        build=partial(build_sam2, config, image_size),
        make_predictor=partial(Sam2Predictor, hydra_config=config),
        weights=weights,
    )


_SAM = [
    (
        "vit_b",
        "ViT-B",
        "sam_vit_b_01ec64.pth",
        375042383,
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
    ),
    (
        "vit_l",
        "ViT-L",
        "sam_vit_l_0b3195.pth",
        1249524607,
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
    ),
    (
        "vit_h",
        "ViT-H",
        "sam_vit_h_4b8939.pth",
        2564550879,
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
    ),
]
_SAM_HQ = [
    (
        "vit_tiny",
        "ViT-Tiny",
        "sam_hq_vit_tiny.pth",
        42526881,
        "0f32c075ccdd870ae54db2f7630e7a0878ede5a2b06d05d6fe02c65a82fb7196",
    ),
    (
        "vit_b",
        "ViT-B",
        "sam_hq_vit_b.pth",
        379335069,
        "14a9d662cd6f5a9c2dba6d40ab0058d88d287e4a18fd6fdc6ad5fb1a3fdeaa57",
    ),
    (
        "vit_l",
        "ViT-L",
        "sam_hq_vit_l.pth",
        1254865805,
        "e1a6c385d62bf005ded91a54d5ec55c985cfc4103ef89c08d90f39f04934c343",
    ),
    (
        "vit_h",
        "ViT-H",
        "sam_hq_vit_h.pth",
        2570940653,
        "a7ac14a085326d9fa6199c8c698c4f0e7280afdbb974d2c4660ec60877b45e35",
    ),
]
_SAM2 = [
    ("tiny", "Hiera-T", "t", 156008466, "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69"),
    ("small", "Hiera-S", "s", 184416285, "6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38"),
    ("base_plus", "Hiera-B+", "b+", 323606802, "a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5"),
    ("large", "Hiera-L", "l", 898083611, "2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318"),
]

BUILTIN_MODELS.append(
    ModelSpec(
        name="mobile_sam_vit_t",
        family="MobileSAM",
        title="MobileSAM ViT-T",
        build=_build_mobile_sam,
        make_predictor=MobileSamPredictor,
        weights=Weights(
            "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
            "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
            40728226,
            "mobile_sam.pt",
        ),
    )
)
for _variant, _title, _file, _size, _sha in _SAM2:
    BUILTIN_MODELS.append(
        sam2_spec(
            f"sam2.1_hiera_{_variant}",
            f"SAM 2.1 {_title}",
            f"configs/sam2.1/sam2.1_hiera_{_file}.yaml",
            Weights(
                f"{_FB}/segment_anything_2/092824/sam2.1_hiera_{_variant}.pt",
                _sha,
                _size,
                f"sam2.1_hiera_{_variant}.pt",
            ),
        )
    )
for _variant, _title, _file, _size, _sha in _SAM:
    BUILTIN_MODELS.append(
        ModelSpec(
            name=f"sam_{_variant}",
            family="SAM",
            title=f"SAM {_title}",
            build=partial(_build_sam, _variant),
            make_predictor=SamPredictor,
            weights=Weights(f"{_FB}/segment_anything/{_file}", _sha, _size, _file),
        )
    )
for _variant, _title, _file, _size, _sha in _SAM_HQ:
    BUILTIN_MODELS.append(
        ModelSpec(
            name=f"sam_hq_{_variant}",
            family="SAM-HQ",
            title=f"SAM-HQ {_title}",
            build=partial(_build_sam_hq, _variant),
            make_predictor=SamHqPredictor,
            weights=Weights(f"{_HQ}/{_file}", _sha, _size, _file),
            strict=False,
        )
    )
