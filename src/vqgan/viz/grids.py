"""Image grids: originals against reconstructions, with optional per-image PSNR captions."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageDraw
from torchvision.utils import make_grid

from vqgan.metrics.reconstruction import psnr, to_unit
from vqgan.viz.samples import to_pil


def comparison_grid(originals: torch.Tensor, reconstructions: torch.Tensor, ncol: int = 8) -> torch.Tensor:
    """A ``(3, H, W)`` grid in [0, 1]: rows alternate originals and their reconstructions, ``ncol`` per row."""
    x, y = to_unit(originals.detach().cpu()), to_unit(reconstructions.detach().cpu())
    if x.shape[1] == 1:
        x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
    rows = []
    for start in range(0, x.shape[0], ncol):
        rows += [x[start : start + ncol], y[start : start + ncol]]
        pad = ncol - rows[-1].shape[0]
        if pad:
            rows[-2] = torch.cat([rows[-2], torch.ones(pad, *x.shape[1:])])
            rows[-1] = torch.cat([rows[-1], torch.ones(pad, *x.shape[1:])])
    return make_grid(torch.cat(rows), nrow=ncol, padding=2, pad_value=1.0)


def save_comparison(
    originals: torch.Tensor, reconstructions: torch.Tensor, path: str | Path, ncol: int = 8, scale: int = 1,
    captions: bool = False,
) -> Path:
    """Write :func:`comparison_grid` as a PNG, upscaled ``scale`` times (nearest), optionally with PSNR captions
    under every reconstruction."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = comparison_grid(originals, reconstructions, ncol)
    img = to_pil(grid, scale)
    if captions:
        values = psnr(originals, reconstructions).tolist()
        h, w = originals.shape[-2] * scale, originals.shape[-1] * scale
        pad = 2 * scale
        n_rows = (len(values) + ncol - 1) // ncol
        pair_h = 2 * (h + pad)  # one row of originals and one of reconstructions, each with its top padding
        canvas = Image.new("RGB", (img.width, n_rows * (pair_h + pad + 12)), "white")
        draw = ImageDraw.Draw(canvas)
        y_off = 0
        for k, r in enumerate(range(0, len(values), ncol)):
            block = img.crop((0, k * pair_h, img.width, (k + 1) * pair_h + pad))
            canvas.paste(block, (0, y_off))
            y_off += pair_h + pad
            for j, v in enumerate(values[r : r + ncol]):
                draw.text((pad + j * (w + pad), y_off - 1), f"{v:.1f}dB", fill=(0, 0, 0))
            y_off += 12
        img = canvas.crop((0, 0, img.width, y_off))
    img.save(path)
    return path
