"""Radiograph-suited augmentation, applied to whole batches.

Geometry is one batched ``affine_grid`` + ``grid_sample`` call (so augmentation does not dominate a CPU
training step); the random parameters are drawn from an explicit ``torch.Generator`` so a
run is reproducible and resumable. Defaults follow common chest-radiograph practice: small rotations
(±10°), translations (±6%), zoom (0.9–1.1), mild brightness/contrast/gamma jitter, optional horizontal flip
(off by default: the heart is on the left), never a vertical flip unless asked.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class AugmentSettings:
    """Strength of each augmentation; ``enabled=False`` turns all of them off."""

    enabled: bool = True
    rotate_deg: float = 10.0
    translate: float = 0.06
    zoom: tuple[float, float] = (0.9, 1.1)
    hflip: bool = False
    vflip: bool = False
    brightness: float = 0.1
    contrast: float = 0.15
    gamma: tuple[float, float] = (0.85, 1.15)
    noise_std: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def affine_resample(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample a batch through per-image affine maps in normalised (i, j) coordinates.

    PyTorch's ``affine_grid`` + ``grid_sample`` (one call per batch; bilinear, border padding). The
    matrix is given in (row, column) order as MONAI's ``AffineTransform(normalized=True)`` took it
    (its default ``reverse_indexing``); PyTorch wants (x, y), so rows and columns are swapped. This
    gives the same output as that MONAI layer, which was medtl's only use of MONAI (see the tests).
    """
    import torch.nn.functional as F

    t = theta[:, [1, 0], :][:, :, [1, 0, 2]]
    grid = F.affine_grid(t, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class BatchAugment:
    """Random affine + intensity jitter for a batch of images in [0, 1], shape (N, C, H, W)."""

    def __init__(self, settings: AugmentSettings) -> None:
        self.settings = settings

    def __call__(
        self, x: torch.Tensor, gen: torch.Generator, *, rows: slice | None = None, n_total: int = 0
    ) -> torch.Tensor:
        """Augment ``x``; with ``rows`` and ``n_total``, ``x`` holds rows ``rows`` of a batch of
        ``n_total`` images, and gets exactly the parameters those rows get when the whole batch is
        augmented at once (the parameters of all ``n_total`` are drawn from ``gen``), so every
        process of a distributed job augments its share of the global batch identically."""
        s = self.settings
        if not s.enabled:
            return x
        n = x.shape[0]
        rows = rows if rows is not None else slice(0, n)
        n_draw = max(n, n_total)

        def u(lo: float, hi: float) -> torch.Tensor:
            return (lo + (hi - lo) * torch.rand(n_draw, generator=gen))[rows]

        ang = u(-s.rotate_deg, s.rotate_deg) * math.pi / 180.0
        scale = u(*s.zoom)
        tx, ty = u(-s.translate, s.translate) * 2, u(-s.translate, s.translate) * 2
        sx = torch.ones(n)
        sy = torch.ones(n)
        if s.hflip:
            sx = torch.where(torch.rand(n_draw, generator=gen)[rows] < 0.5, -sx, sx)
        if s.vflip:
            sy = torch.where(torch.rand(n_draw, generator=gen)[rows] < 0.5, -sy, sy)
        cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = cos * sx
        theta[:, 0, 1] = -sin * sy
        theta[:, 1, 0] = sin * sx
        theta[:, 1, 1] = cos * sy
        theta[:, 0, 2] = tx
        theta[:, 1, 2] = ty
        out = affine_resample(x.float(), theta.to(x.device))
        # intensity: gamma, contrast around the per-image mean, brightness shift (torch ops; MONAI's
        # intensity transforms are per-image and would add a Python loop per sample).
        g = u(*s.gamma).view(n, 1, 1, 1).to(x.device)
        out = out.clamp(0, 1).pow(g)
        c = (1 + u(-s.contrast, s.contrast)).view(n, 1, 1, 1).to(x.device)
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = (out - mean) * c + mean
        b = u(-s.brightness, s.brightness).view(n, 1, 1, 1).to(x.device)
        out = out + b
        if s.noise_std > 0:
            noise = torch.randn((n_draw, *out.shape[1:]), generator=gen)[rows]
            out = out + s.noise_std * noise.to(x.device)
        return out.clamp(0, 1)
