"""Latent-space pictures (seed 000): PCA and t-SNE projections of encoder outputs together with the codebook,
latent statistics, and interpolation between two images.

Projections use scikit-learn: PCA is fitted on the codebook and the latents together so both live in one frame;
t-SNE (van der Maaten & Hinton 2008) runs on a seeded subsample (at most ``max_points``) because it is quadratic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from vqgan.metrics.reconstruction import to_unit
from vqgan.viz.plots import new_figure, save_figure
from vqgan.viz.samples import to_pil


@torch.no_grad()
def collect_latents(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Encoder outputs (before quantization) as ``(N, D)`` vectors, their code indices ``(N,)`` (first stage for
    residual quantizers) and the ``(B, h, w)`` index maps, for images ``(B, C, H, W)`` in [-1, 1]."""
    lat, idx = [], []
    for i in range(0, images.shape[0], batch_size):
        enc = model.encode(images[i : i + batch_size])
        lat.append(enc.latents)
        idx.append(enc.indices)
    latents, indices = torch.cat(lat), torch.cat(idx)
    if indices.dim() == latents.dim():  # (B, h, w, stages): keep the first stage
        indices = indices[..., 0]
    return {
        "latents": latents.movedim(1, -1).reshape(-1, latents.shape[1]).float().cpu(),
        "indices": indices.reshape(-1).cpu(),
        "index_maps": indices.cpu(),
    }


def _codebook_in_latent_space(model: torch.nn.Module) -> torch.Tensor | None:
    """The ``(K, D)`` codes in the space the encoder writes (None when the codebook is implicit or projected)."""
    try:
        cb = model.quantize.codebook.detach().float().cpu()
    except (NotImplementedError, AttributeError):
        return None
    return cb if cb.dim() == 2 and cb.shape[1] == model.quantize.dim else None


def _subsample(n: int, k: int, seed: int = 0) -> np.ndarray:
    if n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def project(latents: np.ndarray, codebook: np.ndarray | None, method: str = "pca", seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """2-D coordinates of latents and codes from one joint ``pca`` or ``tsne`` fit."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    pts = latents if codebook is None else np.concatenate([latents, codebook])
    if method == "pca":
        xy = PCA(n_components=2, random_state=seed).fit_transform(pts)
    elif method == "tsne":
        from threadpoolctl import threadpool_limits

        perplexity = float(min(30.0, max(2.0, (len(pts) - 1) / 3)))
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, max_iter=500)
        # Barnes-Hut t-SNE on a few thousand points gains nothing from OpenMP threads, and on a busy machine
        # spinning threads make it 10x slower; one thread is fast and predictable at this size.
        with threadpool_limits(1 if len(pts) < 5000 else None):
            xy = tsne.fit_transform(pts)
    else:
        raise ValueError(f"unknown projection {method!r}; choose pca or tsne")
    n = len(latents)
    return xy[:n], (xy[n:] if codebook is not None else None)


def plot_projection(
    latents: torch.Tensor, indices: torch.Tensor, codebook: torch.Tensor | None, path: str | Path,
    method: str = "pca", max_points: int = 2000, seed: int = 0,
) -> Path:
    """Scatter of encoder outputs (coloured by their code) and of the codes (black crosses, sized by usage)."""
    keep = _subsample(len(latents), max_points, seed)
    lat = latents.numpy()[keep]
    idx = indices.numpy()[keep]
    cb = codebook.numpy() if codebook is not None else None
    if cb is not None and method == "tsne" and len(cb) > max_points:
        used = np.unique(idx)
        cb_keep = np.union1d(used, _subsample(len(cb), max(0, max_points - len(used)), seed))
        cb = cb[cb_keep]
        counts = np.bincount(indices.numpy(), minlength=codebook.shape[0])[cb_keep]
    else:
        counts = np.bincount(indices.numpy(), minlength=len(cb)) if cb is not None else None
    xy, cxy = project(lat, cb, method, seed)
    fig, ax = new_figure(6.5, 6)
    ax.scatter(xy[:, 0], xy[:, 1], c=idx % 20, cmap="tab20", s=6, alpha=0.6, linewidths=0, label="encoder outputs")
    if cxy is not None:
        sizes = 12 + 60 * np.sqrt(counts / max(counts.max(), 1))
        ax.scatter(cxy[:, 0], cxy[:, 1], marker="x", c=np.where(counts > 0, "black", "tab:red"), s=sizes, lw=1,
                   label="codes (red: unused)")
    name = "PCA" if method == "pca" else "t-SNE"
    ax.set_title(f"{name} of {len(lat)} encoder outputs" + (f" and {len(cxy)} codes" if cxy is not None else ""))
    ax.legend(loc="best", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    return save_figure(fig, path)


def latent_statistics(latents: torch.Tensor, codebook: torch.Tensor | None = None) -> dict[str, Any]:
    """Summary numbers of the encoder outputs (and of the codebook): per-dimension means and standard deviations,
    vector norms, and the mean distance to the nearest code (the quantization error)."""
    z = latents.double()
    stats: dict[str, Any] = {
        "num_vectors": int(z.shape[0]),
        "dim": int(z.shape[1]),
        "mean_abs_per_dim": float(z.mean(0).abs().mean()),
        "std_per_dim_mean": float(z.std(0).mean()),
        "norm_mean": float(z.norm(dim=1).mean()),
        "norm_std": float(z.norm(dim=1).std()),
    }
    if codebook is not None:
        c = codebook.double()
        d = torch.cdist(z, c).min(1).values
        stats.update({"code_norm_mean": float(c.norm(dim=1).mean()), "quantization_error_mean": float(d.mean())})
    return stats


def plot_latent_statistics(latents: torch.Tensor, codebook: torch.Tensor | None, path: str | Path) -> Path:
    """Per-dimension mean and standard deviation of the latents (codebook's in orange), and histograms of
    latent and code norms."""
    z = latents.double().numpy()
    fig, (a, b) = new_figure(10, 3.6, ncols=2)
    dims = np.arange(z.shape[1])
    a.errorbar(dims, z.mean(0), yerr=z.std(0), fmt="o", ms=3, capsize=2, label="encoder outputs")
    if codebook is not None:
        c = codebook.double().numpy()
        a.errorbar(dims + 0.25, c.mean(0), yerr=c.std(0), fmt="s", ms=3, capsize=2, color="tab:orange", label="codes")
    a.set_xlabel("latent dimension")
    a.set_ylabel("mean ± std")
    a.set_title("per-dimension statistics")
    a.legend(fontsize=8)
    b.hist(np.linalg.norm(z, axis=1), bins=40, alpha=0.7, density=True, label="encoder outputs")
    if codebook is not None:
        b.hist(np.linalg.norm(codebook.double().numpy(), axis=1), bins=40, alpha=0.6, density=True, label="codes")
    b.set_xlabel("L2 norm")
    b.set_ylabel("density")
    b.set_title("vector norms")
    b.legend(fontsize=8)
    return save_figure(fig, path)


@torch.no_grad()
def interpolate(model: torch.nn.Module, x0: torch.Tensor, x1: torch.Tensor, steps: int = 8) -> torch.Tensor:
    """Decode quantized linear interpolations of the encoder outputs of two images ``(C, H, W)``:
    ``decode(quantize((1 - t) z0 + t z1))`` for ``t`` in ``linspace(0, 1, steps)``. Returns ``(steps, C, H, W)``."""
    z = model.encode_latents(torch.stack([x0, x1]))
    t = torch.linspace(0, 1, steps, device=z.device).view(-1, *([1] * (z.dim() - 1)))
    zt = (1 - t) * z[:1] + t * z[1:]
    return model.decode(model.quantize(zt).quantized)


def save_interpolation(model: torch.nn.Module, x0: torch.Tensor, x1: torch.Tensor, path: str | Path, steps: int = 8,
                       scale: int = 4) -> Path:
    """A strip: first image, the interpolated decodes, second image (upscaled ``scale`` times, nearest)."""
    frames = torch.cat([x0[None], interpolate(model, x0, x1, steps).clamp(-1, 1), x1[None]])
    strip = to_unit(frames.cpu())
    if strip.shape[1] == 1:
        strip = strip.expand(-1, 3, -1, -1)
    pad = torch.ones(strip.shape[0], 3, strip.shape[2], 2)
    row = torch.cat([torch.cat([f, p], -1) for f, p in zip(strip, pad, strict=True)], -1)
    img = to_pil(row, scale)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
