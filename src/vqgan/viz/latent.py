"""Latent-space pictures (seed 000): PCA and t-SNE (van der Maaten & Hinton 2008, on a seeded subsample: it is
quadratic) of encoder outputs fitted jointly with the codebook, latent statistics, and interpolation."""

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.utils import make_grid

from vqgan.metrics.reconstruction import to_unit
from vqgan.viz.plots import new_figure, save_figure
from vqgan.viz.samples import save_picture


@torch.no_grad()
def collect_latents(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Encoder outputs (before quantization) as ``(N, D)`` vectors, their code indices ``(N,)`` (first stage for
    residual quantizers) and the ``(B, h, w)`` index maps, for images ``(B, C, H, W)`` in [-1, 1]."""
    encoded = [model.encode(x) for x in images.split(batch_size)]
    latents, indices = torch.cat([e.latents for e in encoded]), torch.cat([e.indices for e in encoded])
    if indices.dim() == latents.dim():  # (B, h, w, stages): keep the first stage
        indices = indices[..., 0]
    return {"latents": latents.movedim(1, -1).reshape(-1, latents.shape[1]).float().cpu(),
            "indices": indices.reshape(-1).cpu(), "index_maps": indices.cpu()}


def _subsample(n: int, k: int, seed: int = 0) -> np.ndarray:
    """A sorted, seeded random subset of at most ``k`` of ``range(n)``."""
    return np.sort(np.random.default_rng(seed).choice(n, size=min(n, k), replace=False))


def project(latents: np.ndarray, codebook: np.ndarray | None, method: str = "pca",
            seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """2-D coordinates of latents and codes from one joint ``pca`` or ``tsne`` fit."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    pts = latents if codebook is None else np.concatenate([latents, codebook])
    if method == "pca":
        xy = PCA(n_components=2, random_state=seed).fit_transform(pts)
    elif method == "tsne":
        perplexity = float(min(30.0, max(2.0, (len(pts) - 1) / 3)))
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, max_iter=500)
        # Barnes-Hut t-SNE on a few thousand points gains nothing from OpenMP threads, and on a busy machine
        # spinning threads make it 10x slower; one thread is fast and predictable at this size.
        with threadpool_limits(1 if len(pts) < 5000 else None):
            xy = tsne.fit_transform(pts)
    else:
        raise ValueError(f"unknown projection {method!r}; choose pca or tsne")
    return xy[: len(latents)], (xy[len(latents) :] if codebook is not None else None)


def plot_projection(
    latents: torch.Tensor, indices: torch.Tensor, codebook: torch.Tensor | None, path: str | Path,
    method: str = "pca", max_points: int = 2000, seed: int = 0,
) -> Path:
    """Scatter of encoder outputs (coloured by their code) and of the codes (black crosses, sized by usage)."""
    keep = _subsample(len(latents), max_points, seed)
    lat, idx = latents.numpy()[keep], indices.numpy()[keep]
    cb = codebook.numpy() if codebook is not None else None
    if cb is not None:
        counts = np.bincount(indices.numpy(), minlength=len(cb))
        if method == "tsne" and len(cb) > max_points:  # the used codes and a sample of the others
            used = np.unique(idx)
            cb_keep = np.union1d(used, _subsample(len(cb), max(0, max_points - len(used)), seed))
            cb, counts = cb[cb_keep], counts[cb_keep]
    xy, cxy = project(lat, cb, method, seed)
    fig, ax = new_figure(6.5, 6)
    ax.scatter(xy[:, 0], xy[:, 1], c=idx % 20, cmap="tab20", s=6, alpha=0.6, linewidths=0, label="encoder outputs")
    title = f"{'PCA' if method == 'pca' else 't-SNE'} of {len(lat)} encoder outputs"
    if cxy is not None:
        sizes = 12 + 60 * np.sqrt(counts / max(counts.max(), 1))
        ax.scatter(cxy[:, 0], cxy[:, 1], marker="x", c=np.where(counts > 0, "black", "tab:red"), s=sizes, lw=1,
                   label="codes (red: unused)")
        title += f" and {len(cxy)} codes"
    ax.set(title=title, xticks=[], yticks=[])
    ax.legend(loc="best", fontsize=8)
    return save_figure(fig, path)


def latent_statistics(latents: torch.Tensor, codebook: torch.Tensor | None = None) -> dict[str, Any]:
    """Summary numbers of the encoder outputs (and of the codebook): per-dimension means and standard deviations,
    vector norms, and the mean distance to the nearest code (the quantization error)."""
    z = latents.double()
    norms = z.norm(dim=1)
    stats: dict[str, Any] = {
        "num_vectors": int(z.shape[0]), "dim": int(z.shape[1]),
        "mean_abs_per_dim": float(z.mean(0).abs().mean()), "std_per_dim_mean": float(z.std(0).mean()),
        "norm_mean": float(norms.mean()), "norm_std": float(norms.std()),
    }
    if codebook is not None:
        c = codebook.double()
        stats["code_norm_mean"] = float(c.norm(dim=1).mean())
        stats["quantization_error_mean"] = float(torch.cdist(z, c).min(1).values.mean())
    return stats


def plot_latent_statistics(latents: torch.Tensor, codebook: torch.Tensor | None, path: str | Path) -> Path:
    """Per-dimension mean and standard deviation of the latents (codebook's in orange), and histograms of
    latent and code norms."""
    fig, (a, b) = new_figure(10, 3.6, ncols=2)
    sets = [("encoder outputs", latents, "o", 0.0, 0.7, "tab:blue"),
            ("codes", codebook, "s", 0.25, 0.6, "tab:orange")]
    for label, v, fmt, shift, alpha, color in (s for s in sets if s[1] is not None):
        v = v.double().numpy()
        a.errorbar(np.arange(v.shape[1]) + shift, v.mean(0), yerr=v.std(0), fmt=fmt, ms=3, capsize=2,
                   color=color, label=label)
        b.hist(np.linalg.norm(v, axis=1), bins=40, alpha=alpha, density=True, label=label)
    a.set(xlabel="latent dimension", ylabel="mean ± std", title="per-dimension statistics")
    b.set(xlabel="L2 norm", ylabel="density", title="vector norms")
    for ax in (a, b):
        ax.legend(fontsize=8)
    return save_figure(fig, path)


@torch.no_grad()
def interpolate(model: torch.nn.Module, x0: torch.Tensor, x1: torch.Tensor, steps: int = 8) -> torch.Tensor:
    """Decode quantized linear interpolations of the encoder outputs of two images ``(C, H, W)``:
    ``decode(quantize((1 - t) z0 + t z1))`` for ``t`` in ``linspace(0, 1, steps)``. Returns ``(steps, C, H, W)``."""
    z = model.encode_latents(torch.stack([x0, x1]))
    t = torch.linspace(0, 1, steps, device=z.device).view(-1, *([1] * (z.dim() - 1)))
    return model.decode(model.quantize((1 - t) * z[:1] + t * z[1:]).quantized)


def save_interpolation(model: torch.nn.Module, x0: torch.Tensor, x1: torch.Tensor, path: str | Path, steps: int = 8,
                       scale: int = 4) -> Path:
    """A strip: first image, the interpolated decodes, second image (upscaled ``scale`` times, nearest)."""
    frames = torch.cat([x0[None], interpolate(model, x0, x1, steps).clamp(-1, 1), x1[None]])
    strip = make_grid(to_unit(frames.cpu()), nrow=len(frames), padding=2, pad_value=1.0)
    return save_picture(strip[:, 2:-2, 2:], path, scale)  # a 2-pixel white gap right of every frame
