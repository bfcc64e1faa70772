"""The plugin's full path on real slices (battery X-ray CT, whole-body medical CT) equals upstream.

With random weights the masks' quality means nothing, so these tests check what the plugin adds:
windowing of real intensities, coordinates, caching, and that the mask is the upstream predictor's
mask on the same preprocessed slice, with the image left untouched.
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

import rwth_sam
from rwth_sam.core.coordinates import plane_at

from conftest import SAM2_TINY_256, random_model, upstream_predict, upstream_predictor

MODELS = ["mobile_sam_vit_t", SAM2_TINY_256]
LIVER = 5  # TotalSegmentator label id (totalsegmentator_total_labels.json)


def interior_pixels(mask: np.ndarray, margin: int) -> np.ndarray:
    """(row, col) of pixels whose (2 margin + 1)^2 neighbourhood lies inside ``mask``, row-major."""
    side = 2 * margin + 1
    inside = sliding_window_view(np.asarray(mask, bool), (side, side)).all(axis=(-2, -1))
    return np.argwhere(inside) + margin


def hand_rgb(section: np.ndarray, low: float, high: float) -> np.ndarray:
    grey = np.clip(np.rint((section.astype(np.float64) - low) * 255.0 / (high - low)), 0, 255).astype(np.uint8)
    return np.stack([grey] * 3, axis=-1)


def battery(shared_data):
    tifffile = pytest.importorskip("tifffile")
    folder = shared_data / "battery_xct_cylindrical_cell_ucl"
    image = tifffile.imread(folder / "im_1.tif")
    electrode = tifffile.imread(folder / "mask_1.tif") > 0
    assert image.shape == (576, 576) and image.dtype == np.uint16
    # A 2D layer with the scan's voxel size (0.034 mm); 2D data: rows and columns are displayed.
    geometry = rwth_sam.LayerGeometry(scale=(0.03397, 0.03397), translate=(0.0, 0.0))
    inside = interior_pixels(electrode, 1)  # the winding layers are only a few pixels thick
    clicks = [inside[len(inside) // 2], inside[len(inside) // 5]]
    low, high = np.percentile(image, [0.5, 99.5])  # the default window for non-uint8 data
    return dict(
        image=image,
        window=None,
        hand_window=(low, high),
        geometry=geometry,
        displayed=(0, 1),
        clicks=[tuple(float(v) for v in c) for c in clicks],
        section=lambda: image,
        to_xy=lambda c: (c[1], c[0]),
        mask=electrode,
    )


def medical_ct(shared_data):
    nibabel = pytest.importorskip("nibabel")
    folder = shared_data / "medct_totalseg_wholebody"
    ct_image = nibabel.load(folder / "example_ct.nii.gz")
    volume = ct_image.get_fdata()  # (x, y, z) Hounsfield units, float64
    labels = np.asarray(nibabel.load(folder / "example_seg_fast_force_split.nii.gz").dataobj)
    liver = labels == LIVER
    z = int(np.argmax(liver.sum(axis=(0, 1))))  # the axial slice with the most liver
    inside = interior_pixels(liver[:, :, z], 2)
    clicks = [(*inside[len(inside) // 2], z), (*inside[len(inside) // 4], z)]
    spacing = tuple(float(s) for s in ct_image.header.get_zooms())  # 3 mm isotropic
    geometry = rwth_sam.LayerGeometry(scale=spacing, translate=(-180.0, 20.0, 7.5))
    level, width = 40.0, 400.0  # CT soft tissue, by hand
    return dict(
        image=volume,
        window=rwth_sam.IntensityWindow.ct_preset("CT soft tissue"),
        hand_window=(level - width / 2, level + width / 2),
        geometry=geometry,
        displayed=(1, 2),  # a viewer with an extra leading axis; data axes 0 and 1 displayed, z sliced
        world_prefix=[0.0],
        clicks=[tuple(float(v) for v in c) for c in clicks],
        section=lambda: volume[:, :, z],
        to_xy=lambda c: (c[1], c[0]),
        mask=liver[:, :, z],
        axis=2,
        index=z,
    )


DATASETS = {"battery": battery, "medical_ct": medical_ct}


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("dataset", list(DATASETS))
def test_real_slice_matches_upstream(shared_data, dataset, model_name, monkeypatch):
    case = DATASETS[dataset](shared_data)
    model = random_model(model_name)
    image = case["image"]
    original = image.copy()

    embeds = []
    real_embed = model._embed
    monkeypatch.setattr(model, "_embed", lambda rgb: embeds.append(rgb.shape) or real_embed(rgb))

    # --- plugin: clicks at world coordinates -> plane -> Segmenter
    segmenter = rwth_sam.Segmenter(model, image, window=case["window"])
    world = [np.concatenate([case.get("world_prefix", []), case["geometry"].data_to_world(c)]) for c in case["clicks"]]
    (plane, x1, y1), (plane2, x2, y2) = (plane_at(w, case["displayed"], case["geometry"], image.shape) for w in world)
    assert plane2 == plane
    assert (plane.axis, plane.index) == (case.get("axis"), case.get("index"))
    first = segmenter.predict(plane, points=[(x1, y1)], labels=[1])
    assert len(segmenter.cache) == 1 and len(embeds) == 1
    second = segmenter.predict(plane, points=[(x1, y1), (x2, y2)], labels=[1, 1])
    assert len(segmenter.cache) == 1 and len(embeds) == 1  # the second click reuses the embedding

    section = case["section"]()
    for prediction in (first, second):
        assert prediction.mask.dtype == np.bool_
        assert prediction.mask.shape == section.shape == case["mask"].shape

    # --- upstream on the same slice, preprocessed by hand
    low, high = case["hand_window"]
    if case["window"] is None:
        assert (segmenter.window.low, segmenter.window.high) == (low, high)
    rgb = hand_rgb(section, low, high)
    assert 0 < rgb.mean() < 255  # the window shows something
    np.testing.assert_array_equal(rgb, segmenter.slice_rgb(plane))
    xy1, xy2 = (case["to_xy"](c) for c in case["clicks"])
    np.testing.assert_allclose([x1, y1, x2, y2], [*xy1, *xy2], atol=1e-6)
    assert case["mask"][int(xy1[1]), int(xy1[0])] and case["mask"][int(xy2[1]), int(xy2[0])]

    upstream = upstream_predictor(model)
    upstream.set_image(rgb)
    masks, scores, _ = upstream_predict(upstream, point_coords=np.array([xy1]), point_labels=np.array([1]))
    assert np.array_equal(first.mask, masks[np.argmax(scores)])
    assert np.array_equal(first.scores, scores[[np.argmax(scores)]])
    masks, scores, _ = upstream_predict(
        upstream, point_coords=np.array([xy1, xy2]), point_labels=np.array([1, 1]), multimask_output=False
    )
    assert np.array_equal(second.mask, masks[0])
    assert np.array_equal(second.scores, scores)

    assert np.array_equal(image, original)  # the image data was not modified
