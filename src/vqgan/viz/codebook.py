"""Pictures of the codebook (seed 000): an atlas that decodes codes as image patches, and a token map overlaid on
an image.

An atlas patch is the decoder's output for a small latent map filled with one code (``tokens x tokens``, 2 by
default): it shows what the code "paints" on its own, including the decoder's response to a flat field. Codes are
shown most used first when usage counts are given.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import ImageDraw
from torchvision.utils import make_grid

from vqgan.metrics.reconstruction import to_unit
from vqgan.viz.plots import new_figure, save_figure
from vqgan.viz.samples import to_pil


@torch.no_grad()
def decode_code_patches(model: torch.nn.Module, codes: torch.Tensor, tokens: int = 2, batch_size: int = 64) -> torch.Tensor:
    """Decode each code index of ``codes`` (``(N,)``) from a ``tokens x tokens`` map filled with it.

    Returns ``(N, C, tokens * f, tokens * f)`` images in [-1, 1] (``f`` the downsampling factor). For residual
    quantizers the other stages are set to code 0.
    """
    device = next(model.parameters()).device
    out = []
    stages = getattr(model.quantize, "num_stages", 1)
    for i in range(0, len(codes), batch_size):
        c = codes[i : i + batch_size].to(device)
        maps = c.view(-1, 1, 1).expand(-1, tokens, tokens)
        if stages > 1:
            maps = torch.stack([maps] + [torch.zeros_like(maps)] * (stages - 1), -1)
        out.append(model.decode_codes(maps).clamp(-1, 1).float().cpu())
    return torch.cat(out)


def save_codebook_atlas(
    model: torch.nn.Module, path: str | Path, counts: np.ndarray | torch.Tensor | None = None, max_codes: int = 64,
    tokens: int = 2, scale: int | None = None,
) -> tuple[Path, list[int]]:
    """A grid of decoded code patches (most used codes first when ``counts`` is given, else codes ``0..``), each
    labelled with its index, upscaled ``scale`` times (default: patches of at least 48 pixels). Returns the path
    and the codes shown."""
    k = model.quantize.codebook_size
    if counts is not None:
        counts = torch.as_tensor(np.asarray(counts)).float()
        order = torch.argsort(counts, descending=True, stable=True)
    else:
        order = torch.arange(k)
    codes = order[: min(max_codes, k)]
    patches = to_unit(decode_code_patches(model, codes, tokens))
    if patches.shape[1] == 1:
        patches = patches.expand(-1, 3, -1, -1)
    ncol = int(np.ceil(np.sqrt(len(codes))))
    scale = scale or max(1, -(-48 // patches.shape[-1]))
    grid = make_grid(patches, nrow=ncol, padding=2, pad_value=1.0)
    img = to_pil(grid, scale)
    # Label every patch with its code index, on a small white tab so it stays readable on any patch.
    draw = ImageDraw.Draw(img)
    side = patches.shape[-1]
    for n, code in enumerate(codes.tolist()):
        r, c = divmod(n, ncol)
        x, y = (2 + c * (side + 2)) * scale, (2 + r * (side + 2)) * scale
        label = str(code)
        draw.rectangle((x, y, x + 6 * len(label) + 2, y + 10), fill=(255, 255, 255))
        draw.text((x + 1, y - 1), label, fill=(0, 0, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path, codes.tolist()


def plot_token_map(image: torch.Tensor, indices: torch.Tensor, path: str | Path, codebook_size: int | None = None) -> Path:
    """An image ``(C, H, W)`` in [-1, 1] next to its token map ``(h, w)``, and the two overlaid (each token's
    cell coloured by its code, indices written in the cells when the map is small)."""
    img = to_unit(image.detach().cpu()).permute(1, 2, 0).numpy()
    if img.shape[2] == 1:
        img = np.repeat(img, 3, 2)
    idx = indices.detach().cpu().numpy()
    if idx.ndim == 3:  # residual stages: first stage
        idx = idx[..., 0]
    h, w = idx.shape
    H, W = img.shape[:2]
    fig, axes = new_figure(11, 4, ncols=3)
    extent = (0, W, H, 0)
    axes[0].imshow(img, extent=extent, interpolation="nearest")
    axes[0].set_title("image")
    vmax = (codebook_size or int(idx.max()) + 1) - 1
    axes[1].imshow(idx, cmap="tab20", extent=extent, interpolation="nearest", vmin=0, vmax=max(vmax, 1))
    axes[1].set_title(f"tokens ({h}x{w}, {len(np.unique(idx))} distinct)")
    axes[2].imshow(img, extent=extent, interpolation="nearest")
    axes[2].imshow(idx, cmap="tab20", alpha=0.45, extent=extent, interpolation="nearest", vmin=0, vmax=max(vmax, 1))
    axes[2].set_title("overlay")
    if h * w <= 256:
        for ax in axes[1:]:
            for y in range(h):
                for x in range(w):
                    ax.text((x + 0.5) * W / w, (y + 0.5) * H / h, str(int(idx[y, x])), ha="center", va="center",
                            fontsize=max(5, 9 - max(h, w) // 4), color="black")
    for ax in axes:
        ax.set_xticks(np.arange(0, W + 1, W / w) if w <= 32 else [])
        ax.set_yticks(np.arange(0, H + 1, H / h) if h <= 32 else [])
        ax.set_xticklabels([])
        ax.set_yticklabels([])
        ax.grid(True, color="white", lw=0.5, alpha=0.6)
    return save_figure(fig, path)
