"""A synthetic cylindrical Li-ion cell, made by rwth-sam itself, for sample data, demos and tests.

Cross-sections show a steel can wall, a spiral jelly roll of alternating cathode and anode layers
with separators between them, a central void (mandrel hole), a few pores and a crack, with noise
and a radial beam-hardening-like trend, as in X-ray CT of 18650/21700 cells. The truth labels
come with the image, so results can be measured.
"""

from __future__ import annotations

import numpy as np

BACKGROUND, CAN, CATHODE, ANODE, SEPARATOR, VOID, PORE = range(7)
CLASS_NAMES = {
    CAN: "casing",
    CATHODE: "cathode",
    ANODE: "anode",
    SEPARATOR: "separator",
    VOID: "central void",
    PORE: "pore",
}
_INTENSITY = {BACKGROUND: 10, CAN: 230, CATHODE: 170, ANODE: 90, SEPARATOR: 45, VOID: 20, PORE: 25}


def battery_phantom(
    shape: tuple[int, int, int] = (32, 256, 256), turns: float = 7.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8, labels uint8) of shape (slices, rows, cols); the cell's axis is axis 0."""
    depth, height, width = shape
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    cy, cx = (height - 1) / 2, (width - 1) / 2
    radius = np.hypot(rows - cy, cols - cx)
    angle = np.arctan2(rows - cy, cols - cx)
    outer = 0.46 * min(height, width)
    can_inner, core = outer - max(2.0, outer * 0.05), outer * 0.12

    # Archimedean spiral: the winding phase says which layer a point of the roll lies in.
    pitch = (can_inner - core) / turns
    phase = ((radius - core - pitch * (angle + np.pi) / (2 * np.pi)) / pitch) % 1.0
    roll = np.select([phase < 0.4, phase < 0.5, phase < 0.9], [CATHODE, SEPARATOR, ANODE], SEPARATOR)

    section = np.full((height, width), BACKGROUND, np.uint8)
    section[radius <= can_inner] = roll[radius <= can_inner]
    section[radius < core] = VOID
    section[(radius > can_inner) & (radius <= outer)] = CAN
    labels = np.repeat(section[None], depth, axis=0)

    # pores: small spheres inside the roll; a crack: a thin radial slab through a few slices
    zz, yy, xx = np.mgrid[0:depth, 0:height, 0:width].astype(np.float32)
    for _ in range(6):
        r = rng.uniform(core + pitch, can_inner - pitch)
        a = rng.uniform(-np.pi, np.pi)
        center = (rng.uniform(0, depth - 1), cy + r * np.sin(a), cx + r * np.cos(a))
        size = rng.uniform(2.0, 4.0)
        labels[(zz - center[0]) ** 2 + (yy - center[1]) ** 2 + (xx - center[2]) ** 2 <= size**2] = PORE
    crack_angle = rng.uniform(-np.pi, np.pi)
    on_crack = (
        (np.abs(np.angle(np.exp(1j * (angle - crack_angle)))) * radius < 1.0) & (radius > core) & (radius < can_inner)
    )
    labels[depth // 3 : 2 * depth // 3][:, on_crack] = PORE

    lookup = np.zeros(256, np.float32)
    for label, value in _INTENSITY.items():
        lookup[label] = value
    image = lookup[labels]
    image *= (1.0 + 0.25 * (radius / outer) ** 2)[None]  # beam hardening: brighter rim
    image += rng.normal(0, 12, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), labels
