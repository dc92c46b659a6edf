"""Synthetic data generated on the fly, deterministic per ``(seed, index)``: :class:`SmokePlume` /
:class:`SmokeVideo`, a density field advected by a small incompressible fluid solver ("Stable Fluids", Stam
1999), with the mask that seed 004's masked loss weights its pixels by; :class:`MovingDigits`,
Moving-MNIST-style videos (Srivastava et al. 2015). Labels: a plume's source position, the digits shown."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch.utils.data import Dataset

# A tiny 2D fluid solver (numpy, float32). Grid cells are unit sized, y points down (row index), so buoyancy
# pushes towards smaller y. All fields are (N, N).


def _bilinear(fields: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Sample each of the stacked ``fields`` ``(K, H, W)`` at fractional positions (clamped to the grid) with
    bilinear interpolation; the weights are computed once for all K fields."""
    _, n_y, n_x = fields.shape
    y, x = np.clip(y, 0.0, n_y - 1.001), np.clip(x, 0.0, n_x - 1.001)
    y0, x0 = y.astype(np.intp), x.astype(np.intp)
    fy, fx = (y - y0).ravel(), (x - x0).ravel()
    flat = fields.reshape(len(fields), -1)
    i00 = (y0 * n_x + x0).ravel()
    a, b = flat[:, i00], flat[:, i00 + 1]
    c, d = flat[:, i00 + n_x], flat[:, i00 + n_x + 1]
    return ((a + (b - a) * fx) * (1 - fy) + (c + (d - c) * fx) * fy).reshape(len(fields), *y.shape)


@dataclass
class SmokeParams:
    """Random parameters of one plume (drawn per item from its seed)."""

    source_x: float  # horizontal position of the source, in [0, 1]
    source_radius: float  # in cells
    buoyancy: float
    wind: float  # horizontal drift
    swirl: float  # amplitude of the random divergence-free forcing
    phase: float


class SmokeSolver:
    """A buoyant plume on an ``n x n`` grid: each :meth:`step` injects density at the source, adds buoyancy
    and a gentle swirling force, advects velocity, projects it to be divergence free, then advects density.
    Semi-Lagrangian advection is unconditionally stable: the generator never blows up, whatever its inputs."""

    def __init__(self, n: int, params: SmokeParams, jacobi_iters: int = 12, dt: float = 1.0):
        self.n, self.p, self.iters, self.dt = n, params, jacobi_iters, dt
        self.density, self.vx, self.vy = np.zeros((3, n, n), np.float32)
        self.yy, self.xx = yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
        cx, cy, r = params.source_x * (n - 1), n - 1 - max(2.0, n / 16), params.source_radius
        self.source = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)).astype(np.float32)
        self.t = 0

    def step(self) -> np.ndarray:
        """Advance one time step; returns the density field (values in [0, ~1])."""
        p, n, dt = self.p, self.n, self.dt
        scale = n / 64.0  # keep the look independent of the grid size
        self.density = np.minimum(self.density + 0.35 * self.source, 1.5)
        # Forces: buoyancy (up, proportional to density), wind, and a slowly rotating sinusoidal swirl.
        w = 0.25 * self.t + p.phase
        self.vy -= dt * p.buoyancy * scale * self.density
        self.vx += dt * (p.wind * scale * self.density + p.swirl * scale * np.sin(self.yy * 6.0 / n + w))
        self.vy += dt * p.swirl * scale * 0.5 * np.sin(self.xx * 5.0 / n - w)
        # Advect velocity along itself, then project it: solve lap(p) = div(v) by Jacobi iterations (Neumann
        # boundary: the padding copies the edge) and subtract grad(p), so that it is (nearly) divergence free.
        by, bx = self.yy - dt * self.vy, self.xx - dt * self.vx
        vx, vy = 0.995 * _bilinear(np.stack([self.vx, self.vy]), by, bx)
        div = np.zeros_like(vx)
        div[1:-1, 1:-1] = 0.5 * (vx[1:-1, 2:] - vx[1:-1, :-2] + vy[2:, 1:-1] - vy[:-2, 1:-1])
        q = np.zeros((self.n + 2, self.n + 2), np.float32)
        for _ in range(self.iters):
            q[1:-1, 1:-1] = (q[1:-1, 2:] + q[1:-1, :-2] + q[2:, 1:-1] + q[:-2, 1:-1] - div) * 0.25
            q[0], q[-1], q[:, 0], q[:, -1] = q[1], q[-2], q[:, 1], q[:, -2]
        self.vx = vx - 0.5 * (q[1:-1, 2:] - q[1:-1, :-2])
        self.vy = vy - 0.5 * (q[2:, 1:-1] - q[:-2, 1:-1])
        # Advect density along the projected velocity.
        by, bx = self.yy - dt * self.vy, self.xx - dt * self.vx
        self.density = 0.995 * _bilinear(self.density[None], by, bx)[0]
        # Closed box: no flow through the walls.
        self.vx[:, [0, -1]] = 0.0
        self.vy[[0, -1], :] = 0.0
        self.t += 1
        return self.density


# Range of the plume source's horizontal position (fraction of the width).
SOURCE_X_RANGE = (0.3, 0.7)


def _smoke_params(rng: np.random.Generator, n: int) -> SmokeParams:
    return SmokeParams(
        source_x=float(rng.uniform(*SOURCE_X_RANGE)),
        source_radius=float(rng.uniform(0.04, 0.08) * n),
        buoyancy=float(rng.uniform(0.08, 0.16)),
        wind=float(rng.uniform(-0.06, 0.06)),
        swirl=float(rng.uniform(0.02, 0.06)),
        phase=float(rng.uniform(0, 2 * np.pi)),
    )


def _render(density: np.ndarray, channels: int, tint: np.ndarray) -> np.ndarray:
    """Composite smoke over a dark vertical-gradient background; returns ``(C, H, W)`` in [-1, 1]."""
    a, n = np.clip(density, 0.0, 1.0)[None], density.shape[0]
    if channels == 1:
        bg = np.linspace(0.05, 0.2, n, dtype=np.float32)[None, :, None] * np.ones((1, 1, n), np.float32)
        img = bg * (1 - a) + 0.95 * a
    else:
        grad = np.linspace(0.0, 1.0, n, dtype=np.float32)[None, :, None]
        top, bottom = np.array([0.05, 0.07, 0.15], np.float32), np.array([0.15, 0.12, 0.1], np.float32)
        bg = top[:, None, None] * (1 - grad) + bottom[:, None, None] * grad
        img = bg * (1 - a) + tint[:, None, None] * a
    return (img * 2.0 - 1.0).astype(np.float32)


def source_class(source_x: float, bins: int) -> int:
    """Class of a plume: the index of the bin of :data:`SOURCE_X_RANGE` (``bins`` equal bins) holding its source."""
    lo, hi = SOURCE_X_RANGE
    return min(max(int((source_x - lo) / (hi - lo) * bins), 0), bins - 1)


def source_class_names(bins: int) -> list[str]:
    """Names of the source-position classes, e.g. ``source x 0.30-0.40``."""
    lo, hi = SOURCE_X_RANGE
    edges = np.linspace(lo, hi, bins + 1)
    return [f"source x {a:.2f}-{b:.2f}" for a, b in zip(edges[:-1], edges[1:], strict=True)]


def simulate_smoke(
    resolution: int, steps: int, seed: int = 0, index: int = 0, every: int = 1, warmup: int = 0
) -> tuple[np.ndarray, SmokeParams, np.ndarray]:
    """Run one plume and return ``(densities (T, H, W), params, tint (3,))``, ``T = steps``: one frame every
    ``every`` solver steps after ``warmup`` steps."""
    rng = np.random.default_rng([seed, index, 4])
    params = _smoke_params(rng, resolution)
    tint = rng.uniform(0.75, 1.0, 3).astype(np.float32)
    solver = SmokeSolver(resolution, params)
    densities = [solver.step().copy() for _ in range(warmup + steps * every)]
    return np.stack(densities[warmup + every - 1 :: every]), params, tint


class _Smoke(Dataset):
    """Item ``i`` simulates its own plume (drawn from ``(seed, i)``) as ``{"image": (C, T, H, W) in [-1, 1],
    "mask": (1, T, H, W), "label": ()}``: the mask is ``density > threshold``, the label ``source_class``."""

    def __post_init__(self):
        self.classes = source_class_names(self.source_bins)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < self.length:
            raise IndexError(i)
        d, params, tint = self.simulate(i)
        return {
            "image": torch.from_numpy(np.stack([_render(f, self.channels, tint) for f in d], axis=1)),
            "mask": torch.from_numpy((d > self.threshold).astype(np.float32))[None],
            "label": torch.tensor(source_class(params.source_x, self.source_bins)),
        }


@dataclass(eq=False)
class SmokePlume(_Smoke):
    """Procedural smoke images with masks (``(C, H, W)``, ``(1, H, W)``), for seed 004's masked reconstruction
    loss, after a number of solver steps drawn from ``[min_steps, max_steps]`` (young to developed plumes)."""

    length: int = 1024
    resolution: int = 64
    channels: int = 3
    threshold: float = 0.1
    min_steps: int = 12
    max_steps: int = 48
    seed: int = 0
    source_bins: int = 4

    def simulate(self, i: int) -> tuple[np.ndarray, SmokeParams, np.ndarray]:
        rng = np.random.default_rng([self.seed, i, 5])
        steps = int(rng.integers(self.min_steps, max(self.min_steps, self.max_steps) + 1))
        return simulate_smoke(self.resolution, 1, self.seed, i, every=steps)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = super().__getitem__(i)
        return {**item, "image": item["image"][:, 0], "mask": item["mask"][:, 0]}


@dataclass(eq=False)
class SmokeVideo(_Smoke):
    """Procedural smoke clips with masks: one frame every ``frame_stride`` solver steps, after ``warmup``
    steps so that the plume is visible from the first frame."""

    length: int = 256
    resolution: int = 64
    frames: int = 8
    frame_stride: int = 2
    channels: int = 3
    threshold: float = 0.1
    warmup: int = 10
    seed: int = 0
    source_bins: int = 4

    def simulate(self, i: int) -> tuple[np.ndarray, SmokeParams, np.ndarray]:
        return simulate_smoke(self.resolution, self.frames, self.seed, i, self.frame_stride, self.warmup)


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


def _upsample(img: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of an 8x8 digit to ``size x size`` (no PIL round trip: keeps float precision)."""
    c = (np.arange(size, dtype=np.float32) + 0.5) * img.shape[0] / size - 0.5
    yy, xx = np.meshgrid(c, c, indexing="ij")
    padded = np.pad(img, 1)  # zero border so that the digit fades out at its edges
    return _bilinear(padded[None], yy + 1, xx + 1)[0]


@dataclass(eq=False)
class MovingDigits(Dataset):
    """Moving-MNIST-style clips: ``num_digits`` handwritten digits (scikit-learn's ``load_digits``, upsampled)
    moving at constant speed and bouncing off the frame's edges, drawn with ``max`` blending on black.
    Items ``{"image": (C, T, H, W) in [-1, 1], "label": (), "digits": (num_digits,)}`` (label: ``class_of``),
    or with ``frames_as_images`` frame ``i % frames`` of clip ``i // frames`` as ``(C, H, W)``. ``max_speed``
    is in pixels per frame; with 3 ``channels`` the digits get a random colour per clip."""

    length: int = 1024
    resolution: int = 32
    frames: int = 8
    num_digits: int = 2
    digit_size: int | None = None
    max_speed: float = 2.0
    channels: int = 1
    frames_as_images: bool = False
    seed: int = 0

    def __post_init__(self):
        self.digit_size = self.digit_size or max(8, self.resolution // 2)
        if self.digit_size > self.resolution:
            raise ValueError(f"digit_size={self.digit_size} is larger than the frame ({self.resolution})")
        self.classes = [f"{k:0{self.num_digits}d}" for k in range(10**self.num_digits)]

    @staticmethod
    def class_of(digits: np.ndarray) -> int:
        """The class of a clip showing ``digits``: the digits sorted ascending, read as a base-10 number."""
        return int(sum(int(d) * 10**i for i, d in enumerate(sorted(digits.tolist(), reverse=True))))

    def __len__(self) -> int:
        return self.length * self.frames if self.frames_as_images else self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        images, targets = _digits()
        rng = np.random.default_rng([self.seed, i // self.frames if self.frames_as_images else i, 7])
        s, n, t = self.digit_size, self.resolution, self.frames
        video = np.zeros((t, n, n), np.float32)
        picks = rng.integers(0, len(images), self.num_digits)
        for k in picks:
            glyph = _upsample(images[k], s)
            pos = rng.uniform(0, n - s, 2)
            angle = rng.uniform(0, 2 * np.pi)
            vel = rng.uniform(0.5, 1.0) * self.max_speed * np.array([np.sin(angle), np.cos(angle)])
            for f in range(t):
                y, x = np.round(pos).astype(int)
                video[f, y : y + s, x : x + s] = np.maximum(video[f, y : y + s, x : x + s], glyph)
                pos = pos + vel
                vel = np.where((pos < 0) | (pos > n - s), -vel, vel)  # bounce off the edges
                pos = np.clip(pos, 0, n - s)
        video = np.clip(video, 0.0, 1.0)[None]  # (C, T, H, W) in [0, 1]
        if self.channels == 3:
            video = video * rng.uniform(0.5, 1.0, 3).astype(np.float32)[:, None, None, None]
        if self.frames_as_images:
            video = video[:, i % self.frames]
        labels = targets[picks]
        return {
            "image": torch.from_numpy(video * 2.0 - 1.0),
            "label": torch.tensor(self.class_of(labels)),
            "digits": torch.from_numpy(labels),
        }
