"""Pictures of the codebook (seed 000): an atlas of codes decoded as image patches (the decoder's output for a
latent map filled with one code: what the code "paints" on its own), and a token map overlaid on an image."""

from pathlib import Path

import numpy as np
import torch
from PIL import ImageDraw
from torchvision.utils import make_grid

from vqgan.metrics.reconstruction import to_unit
from vqgan.viz.plots import new_figure, save_figure
from vqgan.viz.samples import save_picture, to_pil


@torch.no_grad()
def decode_code_patches(model: torch.nn.Module, codes: torch.Tensor, tokens: int = 2, batch_size: int = 64) -> torch.Tensor:
    """Decode each code of ``codes`` ``(N,)`` from a ``tokens x tokens`` map filled with it: ``(N, C,
    tokens * f, tokens * f)`` images in [-1, 1] (``f`` the downsampling factor; other stages at 0)."""
    device, stages = next(model.parameters()).device, getattr(model.quantize, "num_stages", 1)
    out = []
    for c in codes.split(batch_size):
        maps = c.to(device).view(-1, 1, 1).expand(-1, tokens, tokens)
        if stages > 1:
            maps = torch.stack([maps] + [torch.zeros_like(maps)] * (stages - 1), -1)
        out.append(model.decode_codes(maps).clamp(-1, 1).float().cpu())
    return torch.cat(out)


def save_codebook_atlas(
    model: torch.nn.Module, path: str | Path, counts: np.ndarray | torch.Tensor | None = None, max_codes: int = 64,
    tokens: int = 2, scale: int | None = None,
) -> tuple[Path, list[int]]:
    """A grid of decoded code patches (most used first given ``counts``, else codes ``0..``), each labelled
    with its index, upscaled ``scale`` times (default: to at least 48 pixels); returns the path and codes."""
    order = torch.arange(model.quantize.codebook_size)
    if counts is not None:
        order = torch.as_tensor(np.asarray(counts)).float().argsort(descending=True, stable=True)
    codes = order[:max_codes].tolist()
    patches = to_unit(decode_code_patches(model, torch.tensor(codes), tokens))
    ncol, side = int(np.ceil(np.sqrt(len(codes)))), patches.shape[-1]
    scale = scale or max(1, -(-48 // side))
    img = to_pil(make_grid(patches, nrow=ncol, padding=2, pad_value=1.0), scale)
    draw = ImageDraw.Draw(img)
    for n, code in enumerate(codes):  # the index on a small white tab, readable on any patch
        r, c = divmod(n, ncol)
        x, y = (2 + c * (side + 2)) * scale, (2 + r * (side + 2)) * scale
        draw.rectangle((x, y, x + 6 * len(str(code)) + 2, y + 10), fill=(255, 255, 255))
        draw.text((x + 1, y - 1), str(code), fill=(0, 0, 0))
    return save_picture(img, path), codes


def plot_token_map(image: torch.Tensor, indices: torch.Tensor, path: str | Path, codebook_size: int | None = None) -> Path:
    """An image ``(C, H, W)`` in [-1, 1] next to its token map ``(h, w)``, and the two overlaid (each token's
    cell coloured by its code, indices written in the cells when the map is small)."""
    img = to_unit(image.detach().cpu()).expand(3, -1, -1).permute(1, 2, 0).numpy()
    idx = indices.detach().cpu().numpy()
    idx = idx[..., 0] if idx.ndim == 3 else idx  # residual stages: the first
    (h, w), (H, W) = idx.shape, img.shape[:2]
    fig, axes = new_figure(11, 4, ncols=3)
    style = dict(extent=(0, W, H, 0), interpolation="nearest")
    codes = dict(cmap="tab20", vmin=0, vmax=max((codebook_size or int(idx.max()) + 1) - 1, 1), **style)
    axes[0].imshow(img, **style)
    axes[1].imshow(idx, **codes)
    axes[2].imshow(img, **style)
    axes[2].imshow(idx, alpha=0.45, **codes)
    titles = ("image", f"tokens ({h}x{w}, {len(np.unique(idx))} distinct)", "overlay")
    for ax, title in zip(axes, titles, strict=True):
        ax.set(title=title, xticks=np.arange(0, W + 1, W / w) if w <= 32 else [],
               yticks=np.arange(0, H + 1, H / h) if h <= 32 else [], xticklabels=[], yticklabels=[])
        ax.grid(True, color="white", lw=0.5, alpha=0.6)
    if h * w <= 256:
        for ax in axes[1:]:
            for (y, x), code in np.ndenumerate(idx):
                ax.text((x + 0.5) * W / w, (y + 0.5) * H / h, str(int(code)), ha="center", va="center",
                        fontsize=max(5, 9 - max(h, w) // 4), color="black")
    return save_figure(fig, path)
