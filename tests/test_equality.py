"""The plugin's masks equal the upstream predictors' masks, called directly on a hand-made slice.

Plugin side: a click at world coordinates goes through ``plane_at`` and ``Segmenter.predict``.
Upstream side: the slice is cut out with numpy, windowed with the documented formula, and the
click's (x, y) = (column, row) is computed by hand; the upstream predictor class of the model's
package gets the same model module. Both sides must agree exactly: masks, scores and logits.
"""

from __future__ import annotations

import numpy as np
import pytest

import rwth_sam
from rwth_sam.core.coordinates import plane_at

from conftest import LARGE_MODELS, SAM2_TINY_256, SMALL_MODELS, random_model, upstream_predict, upstream_predictor

SHAPE = (6, 70, 90)  # anisotropic: the slices along axis 1 are only 6 rows high
GEOMETRY = rwth_sam.LayerGeometry(scale=(2.0, 0.5, 0.7), translate=(10.0, -5.0, 3.0))
EXTRA_WORLD_AXIS = 7.0  # a leading viewer dimension (e.g. time) the layer does not have
SLICE_INDEX = {0: 4, 1: 2, 2: 3}  # which slice along the sliced axis
CT_WINDOW = "CT soft tissue"

# (rows, cols) of the layer's axes as displayed: sliced axis 0, 1, 2, and axis 0 transposed.
DISPLAYS = [(1, 2), (0, 2), (0, 1), (2, 1)]
DTYPES = ["uint8", "int16"]


def _cases():
    # The 256-pixel SAM 2 model is cheap: every display and dtype. The 1024-pixel small models (an
    # encoder run is seconds on a loaded CPU): every display once, the dtype alternating.
    cases = []
    for model in SMALL_MODELS:
        combos = [(d, t) for d in DISPLAYS for t in DTYPES]
        if model != SAM2_TINY_256:
            combos = [(d, DTYPES[i % 2]) for i, d in enumerate(DISPLAYS)]
        cases += [pytest.param(model, d, t, id=_id(model, d, t)) for d, t in combos]
    # Large models: one case each (the transposed display of a windowed int16 volume), to keep -m slow bearable.
    slow = pytest.mark.slow
    cases += [pytest.param(m, (2, 1), "int16", id=_id(m, (2, 1), "int16"), marks=slow) for m in LARGE_MODELS]
    return cases


def _id(model, rows_cols, dtype):
    return f"{model}-rows{rows_cols[0]}cols{rows_cols[1]}-{dtype}"


def make_volume(dtype: str) -> np.ndarray:
    """A small volume with structure (a bright ellipsoid and a dark box) and noise."""
    rng = np.random.default_rng(42)
    z, y, x = np.meshgrid(*(np.arange(s) for s in SHAPE), indexing="ij")
    blob = ((z - 3) / 3.0) ** 2 + ((y - 38) / 18.0) ** 2 + ((x - 50) / 25.0) ** 2 < 1.0
    box = (y > 5) & (y < 20) & (x > 60) & (x < 85)
    if dtype == "uint8":
        volume = 60 + 120 * blob - 40 * box + rng.normal(0, 12, SHAPE)
        return np.clip(np.rint(volume), 0, 255).astype(np.uint8)
    # Hounsfield-like: air around, soft tissue, an organ at ~60 HU, bone in the box.
    volume = np.where(x < 8, -1000, 20) + 40 * blob + 700 * box + rng.normal(0, 25, SHAPE)
    return np.rint(volume).astype(np.int16)


def upstream_rgb(section: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    """The documented mapping, written out: clip(rint((v - low) * 255 / (high - low)), 0, 255), grey to RGB."""
    if window is None:
        assert section.dtype == np.uint8
        grey = section
    else:
        low, high = window
        grey = np.clip(np.rint((section.astype(np.float64) - low) * 255.0 / (high - low)), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.stack([grey, grey, grey], axis=-1))


def world_of(data_point) -> np.ndarray:
    """World coordinates of a data point, with the viewer's extra leading axis."""
    return np.concatenate([[EXTRA_WORLD_AXIS], GEOMETRY.data_to_world(data_point)])


@pytest.mark.parametrize("model_name, rows_cols, dtype", _cases())
def test_plugin_equals_upstream(model_name, rows_cols, dtype):
    model = random_model(model_name)
    volume = make_volume(dtype)
    original = volume.copy()
    row_axis, col_axis = rows_cols
    (axis,) = {0, 1, 2} - {row_axis, col_axis}
    index = SLICE_INDEX[axis]
    window = None if dtype == "uint8" else rwth_sam.IntensityWindow.ct_preset(CT_WINDOW)
    hand_window = None if dtype == "uint8" else (40.0 - 400.0 / 2, 40.0 + 400.0 / 2)  # level 40, width 400 HU

    def voxel(row_fraction, col_fraction, row_shift=0.0, col_shift=0.0):
        """A data point on the slice (sub-voxel shifts, and off the slice centre by 0.3 along the sliced axis)."""
        point = np.zeros(3)
        point[axis] = index + 0.3
        point[row_axis] = round(row_fraction * (SHAPE[row_axis] - 1)) + row_shift
        point[col_axis] = round(col_fraction * (SHAPE[col_axis] - 1)) + col_shift
        return point

    positive, negative = voxel(0.55, 0.6, 0.25, -0.25), voxel(0.1, 0.9)
    corner0, corner1 = voxel(0.2, 0.3), voxel(0.9, 0.8, 0.0, 0.5)

    # --- plugin path: world clicks -> plane_at -> Segmenter.predict
    displayed = (row_axis + 1, col_axis + 1)  # world axes: the extra one comes first
    plane, x, y = plane_at(world_of(positive), displayed, GEOMETRY, volume.shape)
    clicks = [plane_at(world_of(p), displayed, GEOMETRY, volume.shape) for p in (negative, corner0, corner1)]
    assert all(other == plane for other, _, _ in clicks)
    (_, nx, ny), (_, bx0, by0), (_, bx1, by1) = clicks
    assert (plane.axis, plane.index, plane.row_axis, plane.col_axis) == (axis, index, row_axis, col_axis)

    segmenter = rwth_sam.Segmenter(model, volume, window=window)
    first = segmenter.predict(plane, points=[(x, y)], labels=[1])
    candidates = segmenter.predict(plane, points=[(x, y)], labels=[1], all_masks=True)
    second = segmenter.predict(
        plane,
        points=[(x, y), (nx, ny)],
        labels=[1, 0],
        box=(bx0, by0, bx1, by1),
        mask_logits=first.best_logits,
        multimask=False,
    )
    assert len(segmenter.cache) == 1

    # --- upstream path: numpy slice, hand-written window, hand-computed (x, y) = (col, row)
    section = np.take(volume, index, axis=axis)
    if row_axis > col_axis:
        section = section.T
    height, width = SHAPE[row_axis], SHAPE[col_axis]
    assert section.shape == (height, width)
    rgb = upstream_rgb(section, hand_window)
    np.testing.assert_array_equal(rgb, segmenter.slice_rgb(plane))  # the same image goes in

    def xy(point):
        return [point[col_axis], point[row_axis]]

    np.testing.assert_allclose([x, y], xy(positive), atol=1e-9)
    upstream = upstream_predictor(model)
    upstream.set_image(rgb)
    masks, scores, logits = upstream_predict(
        upstream, point_coords=np.array([xy(positive)]), point_labels=np.array([1]), multimask_output=True
    )
    best = int(np.argmax(scores))
    # SAM-HQ's decoder keeps only its best SAM candidate (plus the HQ token) even when asked for three
    assert masks.shape == (1 if rwth_sam.get_model_spec(model_name).family == "SAM-HQ" else 3, height, width)
    assert first.mask.dtype == np.bool_ and first.mask.shape == (height, width)
    assert np.array_equal(first.mask, masks[best])
    assert np.array_equal(first.scores, scores[best : best + 1])
    assert np.array_equal(first.best_logits, logits[best : best + 1])

    # all_masks: every candidate, in upstream's order
    assert np.array_equal(candidates.masks, masks)
    assert np.array_equal(candidates.scores, scores)
    assert np.array_equal(candidates.logits, logits)
    assert candidates.best == best

    masks2, scores2, logits2 = upstream_predict(
        upstream,
        point_coords=np.array([xy(positive), xy(negative)]),
        point_labels=np.array([1, 0]),
        box=np.array(xy(corner0) + xy(corner1)),
        mask_input=logits[best : best + 1],
        multimask_output=False,
    )
    assert masks2.shape == (1, height, width)
    assert np.array_equal(second.mask, masks2[0])
    assert np.array_equal(second.scores, scores2)
    assert np.array_equal(second.logits, logits2)

    assert np.array_equal(volume, original)  # the image is never modified
