"""Distances between two sets of images (or clips) that need no pretrained network and no download, to rank
priors without the Inception / I3D weights of FID and FVD; lower is better for all. Sliced Wasserstein (Rabin
et al. 2011; Deshpande et al. 2018) is a true metric on distributions at the cost of a sort per direction; on
random conv features (such nets capture image statistics, Ulyanov et al. 2018) it weighs local structure."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vqgan.metrics.reconstruction import frames


def _quantiles(x: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` evenly spaced quantiles ``(n, k)`` of every column of sorted ``x`` ``(m, k)`` (interpolated)."""
    m = x.shape[0]
    if m == n:
        return x
    pos = torch.linspace(0, m - 1, n, device=x.device, dtype=x.dtype)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=m - 1)
    w = (pos - lo).unsqueeze(1)
    return x[lo] * (1 - w) + x[hi] * w


def _sorted_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of the quantiles of two column-wise sorted sets (1-Wasserstein per column)."""
    n = max(x.shape[0], y.shape[0])
    return (_quantiles(x, n) - _quantiles(y, n)).abs().mean()


def sliced_wasserstein(
    x: torch.Tensor, y: torch.Tensor, num_projections: int = 256, seed: int = 0
) -> torch.Tensor:
    """Sliced 1-Wasserstein distance (a float32 scalar) between the sets ``x`` ``(n, ...)`` and ``y``
    ``(m, ...)``, along directions drawn with ``seed`` (two models compared with one seed share them)."""
    x = x.flatten(1).float()
    y = y.flatten(1).float()
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"the sets have items of different sizes: {x.shape[1]} and {y.shape[1]} values")
    if min(x.shape[0], y.shape[0]) < 2:
        raise ValueError("each set needs at least 2 items")
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(x.shape[1], num_projections, generator=g).to(x.device)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    return _sorted_distance((x @ dirs).sort(0).values, (y @ dirs).sort(0).values)


@torch.no_grad()
def random_features(x: torch.Tensor, seed: int = 0, width: int = 32) -> torch.Tensor:
    """Features ``(n, 8 * width)`` of images ``(n, C, H, W)``: three seeded random stride-2 3x3 convs with
    ReLU, then every channel's mean and standard deviation."""
    g = torch.Generator().manual_seed(seed)
    chans = [x.shape[1], width, 2 * width, 4 * width]
    h = x.float()
    for c_in, c_out in zip(chans[:-1], chans[1:], strict=True):
        w = torch.randn(c_out, c_in, 3, 3, generator=g) * (2.0 / (9 * c_in)) ** 0.5  # He init keeps scale
        h = F.relu(F.conv2d(h, w.to(h.device), stride=2, padding=1))
    return torch.cat([h.mean((2, 3)), h.std((2, 3))], dim=1)


def colour_histogram_distance(
    x: torch.Tensor, y: torch.Tensor, max_values: int = 200_000, seed: int = 0
) -> torch.Tensor:
    """Mean over channels of the 1-Wasserstein distance between the values of images (or clips) ``x`` and
    ``y``, on at most ``max_values`` values per channel (a seeded random subset: large sets stay cheap)."""
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"the sets have {x.shape[1]} and {y.shape[1]} channels")
    g = torch.Generator().manual_seed(seed)

    def values(t: torch.Tensor) -> torch.Tensor:
        v = t.float().transpose(0, 1).flatten(1)  # (C, n * pixels)
        if v.shape[1] > max_values:
            v = v[:, torch.randperm(v.shape[1], generator=g)[:max_values].to(v.device)]
        return v.sort(1).values.T  # (values, C)

    return _sorted_distance(values(x), values(y))


def image_set_distances(
    generated: torch.Tensor, reference: torch.Tensor, seed: int = 0, pixel_size: int = 32
) -> dict[str, float]:
    """``{"swd_pixels", "swd_features", "colour"}`` between images in [-1, 1] ``(n, C, H, W)``, pixels area
    resized to ``pixel_size`` (the cost does not grow with resolution; a one-pixel shift barely counts)."""
    if generated.shape[1:] != reference.shape[1:]:
        raise ValueError(f"image shapes differ: {tuple(generated.shape[1:])} and {tuple(reference.shape[1:])}")

    pixels = [F.adaptive_avg_pool2d(t.float(), pixel_size) if t.shape[-1] > pixel_size else t.float()
              for t in (generated, reference)]
    fg, fr = random_features(generated, seed), random_features(reference, seed)
    scale = torch.cat([fg, fr]).std(0).clamp_min(1e-6)  # each feature on a comparable scale
    return {
        "swd_pixels": float(sliced_wasserstein(*pixels, seed=seed)),
        "swd_features": float(sliced_wasserstein(fg / scale, fr / scale, seed=seed)),
        "colour": float(colour_histogram_distance(generated, reference, seed=seed)),
    }


def clip_set_distances(
    generated: torch.Tensor, reference: torch.Tensor, seed: int = 0, pixel_size: int = 32
) -> dict[str, float]:
    """``{"swd_frames", "swd_features", "colour", "swd_motion"}`` between clips ``(n, C, T, H, W)`` in
    [-1, 1]: :func:`image_set_distances` on frames, sliced Wasserstein on each clip's frame differences."""
    if generated.dim() != 5 or generated.shape[1:] != reference.shape[1:]:
        shapes = f"{tuple(generated.shape)} and {tuple(reference.shape)}"
        raise ValueError(f"expected two sets of clips of one shape, got {shapes}")

    def motion(t: torch.Tensor) -> torch.Tensor:
        d = frames((t[:, :, 1:] - t[:, :, :-1]).float())
        return F.adaptive_avg_pool2d(d, min(pixel_size, t.shape[-2])).view(len(t), -1)

    per_frame = image_set_distances(frames(generated), frames(reference), seed, pixel_size)
    out = {"swd_frames": per_frame.pop("swd_pixels"), **per_frame, "swd_motion": 0.0}
    if generated.shape[2] > 1:
        out["swd_motion"] = float(sliced_wasserstein(motion(generated), motion(reference), seed=seed))
    return out
