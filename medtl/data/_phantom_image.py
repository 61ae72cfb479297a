"""Chest-radiograph-like density images for the synthetic phantom (pure numpy/scipy, no I/O).

Hand-written: no maintained library draws radiograph phantoms (Shepp-Logan in scikit-image is a head CT
slice). The picture is a sum of smooth shapes: body outline, two dark lung fields, mediastinum and spine,
heart, clavicles and ribs as curved bright bands, low-frequency "anatomical" noise and fine quantum noise.
Density is in [0, 1] with bright = dense.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter


@dataclass(frozen=True)
class Anatomy:
    """Per-patient shape parameters (drawn once per patient, so a patient's images look alike)."""

    body_ax: float
    body_ay: float
    tissue: float
    lung_cx: tuple[float, float]
    lung_cy: tuple[float, float]
    lung_ax: tuple[float, float]
    lung_ay: tuple[float, float]
    lung_depth: float
    heart_ax: float
    heart_ay: float
    rib_top: float
    rib_spacing: float
    rib_curve: float
    tilt: float


def draw_anatomy(rng: np.random.Generator) -> Anatomy:
    """Random but plausible anatomy."""
    return Anatomy(
        body_ax=float(rng.uniform(0.78, 0.92)),
        body_ay=float(rng.uniform(1.0, 1.15)),
        tissue=float(rng.uniform(0.45, 0.55)),
        lung_cx=(float(rng.uniform(-0.42, -0.34)), float(rng.uniform(0.34, 0.42))),
        lung_cy=(float(rng.uniform(-0.12, -0.02)), float(rng.uniform(-0.12, -0.02))),
        lung_ax=(float(rng.uniform(0.23, 0.29)), float(rng.uniform(0.21, 0.27))),
        lung_ay=(float(rng.uniform(0.52, 0.62)), float(rng.uniform(0.48, 0.58))),
        lung_depth=float(rng.uniform(0.28, 0.36)),
        heart_ax=float(rng.uniform(0.28, 0.36)),
        heart_ay=float(rng.uniform(0.22, 0.28)),
        rib_top=float(rng.uniform(-0.78, -0.70)),
        rib_spacing=float(rng.uniform(0.13, 0.16)),
        rib_curve=float(rng.uniform(0.45, 0.65)),
        tilt=float(rng.uniform(-0.04, 0.04)),
    )


def _soft(inside: np.ndarray, edge: float) -> np.ndarray:
    """Smooth step from a signed 'inside' distance-like field (positive inside)."""
    return 1.0 / (1.0 + np.exp(np.clip(-inside / edge, -60.0, 60.0)))


def _ellipse(xx, yy, cx, cy, ax, ay, power: float = 2.0) -> np.ndarray:
    return 1.0 - (np.abs((xx - cx) / ax) ** power + np.abs((yy - cy) / ay) ** power)


def render_chest(
    anatomy: Anatomy,
    size: int,
    rng: np.random.Generator,
    *,
    n_lesions: int = 0,
    lesion_contrast: tuple[float, float] = (0.2, 0.3),
    lesion_radius: tuple[float, float] = (0.07, 0.11),
    noise: float = 1.0,
) -> np.ndarray:
    """Render one float32 size×size density image in [0, 1] (bright = dense).

    Args:
        anatomy: the patient's shape parameters.
        size: side length in pixels.
        rng: randomness of this image (position jitter, noise, lesions).
        n_lesions: number of round-ish opacities placed inside the lung fields.
        lesion_contrast: (low, high) added density of a lesion's core.
        lesion_radius: (low, high) radius in units of half the image width.
        noise: multiplier of the noise amplitudes.
    """
    a = anatomy
    lin = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    yy, xx = np.meshgrid(lin, lin, indexing="ij")
    # small per-image positioning jitter and rotation
    dx, dy = (float(v) for v in rng.uniform(-0.03, 0.03, size=2))
    c, s = float(np.cos(a.tilt)), float(np.sin(a.tilt))
    x = c * (xx - dx) - s * (yy - dy)
    y = s * (xx - dx) + c * (yy - dy)
    edge = 2.5 / size

    body = _soft(_ellipse(x, y, 0.0, 0.12, a.body_ax, a.body_ay, 2.2), 0.04)
    dens = 0.03 + body * (a.tissue + 0.10 * (y + 1.0) / 2.0)
    lungs = _lung_fields(a, x, y)
    # lungs are darkest laterally; vessels and hila make them denser towards the middle
    dens -= a.lung_depth * lungs * body * (0.7 + 0.3 * np.clip(np.abs(x) / 0.55, 0.0, 1.0))
    heart = _add_mediastinum(dens, a, x, y, body, edge)
    dens += 0.10 * _ribs(a, x, y, edge) * body * (0.35 + 0.65 * lungs)
    # lesions: round-ish opacities inside the lung fields (away from the heart)
    if n_lesions:
        candidates = np.argwhere((lungs > 0.97) & (heart < 0.2))
        for _ in range(n_lesions):
            r = float(rng.uniform(*lesion_radius))
            iy, ix = _lesion_centre(rng, candidates, lungs, r)
            _add_lesion(dens, rng, xx, yy, lin, iy, ix, r, lesion_contrast)

    # anatomical (low-frequency) and quantum (fine) noise
    dens += noise * 0.025 * _unit_noise(rng, size, size / 25.0)
    dens += noise * 0.015 * _unit_noise(rng, size, size / 8.0)
    dens += noise * 0.008 * rng.standard_normal((size, size)).astype(np.float32)
    return np.clip(dens, 0.0, 1.0).astype(np.float32)


def _lung_fields(a: Anatomy, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The two lung fields (1 inside, 0 outside), their bottoms shaped by the diaphragm."""
    lungs = np.zeros_like(x)
    for k in range(2):
        shape = _ellipse(x, y, a.lung_cx[k], a.lung_cy[k], a.lung_ax[k], a.lung_ay[k], 2.3)
        # diaphragm: flatten the bottom of the lung field with a dome
        dome = (
            (a.lung_cy[k] + 0.8 * a.lung_ay[k])
            - 0.25 * ((x - a.lung_cx[k]) / a.lung_ax[k]) ** 2
            - y
        )
        lungs = np.maximum(lungs, _soft(np.minimum(shape, dome * 3.0), 0.06))
    return lungs


def _add_mediastinum(
    dens: np.ndarray, a: Anatomy, x: np.ndarray, y: np.ndarray, body: np.ndarray, edge: float
) -> np.ndarray:
    """Add the spine, mediastinum and heart to ``dens`` in place; the heart's mask."""
    spine = _soft(0.085 - np.abs(x), edge * 2) * body
    vertebrae = 0.5 + 0.5 * np.cos(2 * np.pi * (y + 1.0) / 0.11)
    dens += spine * (0.16 + 0.04 * vertebrae)
    mediastinum = _soft(0.14 - np.abs(x + 0.01), 0.03) * _soft(0.35 - y, 0.1)
    dens += 0.07 * mediastinum * body
    heart = _soft(_ellipse(x, y, 0.12, 0.28, a.heart_ax, a.heart_ay), 0.15)
    dens += 0.12 * heart * body
    return heart


def _ribs(a: Anatomy, x: np.ndarray, y: np.ndarray, edge: float) -> np.ndarray:
    """Ten ribs and the clavicles as curved bright bands (before weighting by body and lungs)."""
    ribs = np.zeros_like(x)
    ax_ = np.abs(x)
    for k in range(10):
        yk = a.rib_top + k * a.rib_spacing - 0.30 * ax_ + a.rib_curve * ax_**2
        width = 0.020 + 0.002 * k
        ribs += np.exp(-(((y - yk) / width) ** 2))
    for sign in (-1.0, 1.0):  # clavicles
        yc = -0.62 + 0.25 * (sign * x - 0.35) ** 2
        ribs += 1.2 * np.exp(-(((y - yc) / 0.03) ** 2)) * _soft(0.6 - np.abs(x - sign * 0.35), 0.03)
    return np.minimum(ribs, 1.3) * _soft(ax_ - 0.07, edge * 2) * _soft(0.85 - ax_, 0.05)


def _lesion_centre(
    rng: np.random.Generator, candidates: np.ndarray, lungs: np.ndarray, r: float
) -> tuple[int, int]:
    """A lesion centre (row, column) drawn from ``candidates``, at least ~``r`` inside the lungs."""
    size = lungs.shape[0]
    iy = ix = size // 2
    # rejection sampling: keep the lesion's centre at least ~r inside the lung field
    for _try in range(30):
        if not len(candidates):
            break
        iy, ix = (int(v) for v in candidates[rng.integers(len(candidates))])
        rp = int(r * size / 2.0)
        near = [
            (iy, min(size - 1, ix + rp)),
            (iy, max(0, ix - rp)),
            (min(size - 1, iy + rp), ix),
            (max(0, iy - rp), ix),
        ]
        if all(lungs[p] > 0.5 for p in near):
            break
    return iy, ix


def _add_lesion(
    dens: np.ndarray,
    rng: np.random.Generator,
    xx: np.ndarray,
    yy: np.ndarray,
    lin: np.ndarray,
    iy: int,
    ix: int,
    r: float,
    lesion_contrast: tuple[float, float],
) -> None:
    """Add one round-ish, slightly lobulated opacity of radius ~``r`` at (iy, ix), in place."""
    size = dens.shape[0]
    rx, ry = r * float(rng.uniform(0.8, 1.2)), r * float(rng.uniform(0.8, 1.2))
    phase = float(rng.uniform(0, 2 * np.pi))
    contrast = float(rng.uniform(*lesion_contrast))
    # work in a box around the lesion only (the profile is ~0 beyond 2.5 radii)
    half = int(np.ceil(2.5 * max(rx, ry) * size / 2.0)) + 1
    y0, y1 = max(0, iy - half), min(size, iy + half + 1)
    x0, x1 = max(0, ix - half), min(size, ix + half + 1)
    ex = xx[y0:y1, x0:x1] - lin[ix]
    ey = yy[y0:y1, x0:x1] - lin[iy]
    theta = np.arctan2(ey, ex)
    rho = np.sqrt((ex / rx) ** 2 + (ey / ry) ** 2) * (1.0 + 0.12 * np.sin(3 * theta + phase))
    dens[y0:y1, x0:x1] += contrast * _soft(1.0 - rho, 0.18)


def _unit_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Smooth noise with correlation length ~``sigma`` pixels, unit standard deviation.

    Drawn on a coarse grid and upsampled (much faster than filtering at full size).
    """
    from scipy.ndimage import zoom

    step = max(1, int(sigma // 2))
    n_coarse = -(-size // step) + 1
    coarse = gaussian_filter(
        rng.standard_normal((n_coarse, n_coarse)).astype(np.float32), sigma / step, mode="wrap"
    )
    n = zoom(coarse, size / n_coarse, order=1)[:size, :size]
    return n / max(float(n.std()), 1e-6)
