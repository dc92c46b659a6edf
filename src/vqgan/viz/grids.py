"""Image grids: originals against reconstructions, with optional per-image PSNR captions."""

from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torchvision.utils import make_grid

from vqgan.metrics.reconstruction import psnr, to_unit
from vqgan.viz.samples import save_picture, to_pil


def comparison_grid(originals: torch.Tensor, reconstructions: torch.Tensor, ncol: int = 8) -> torch.Tensor:
    """A ``(3, H, W)`` grid in [0, 1]: rows alternate originals and their reconstructions, ``ncol`` per row."""
    pad = (0, 0, 0, 0, 0, 0, 0, -len(originals) % ncol)  # the last row filled with white to ncol images
    x, y = (F.pad(to_unit(v.detach().cpu()), pad, value=1.0).view(-1, ncol, *v.shape[1:])
            for v in (originals, reconstructions))
    return make_grid(torch.stack([x, y], 1).flatten(0, 2), nrow=ncol, padding=2, pad_value=1.0)


def save_comparison(
    originals: torch.Tensor, reconstructions: torch.Tensor, path: str | Path, ncol: int = 8, scale: int = 1,
    captions: bool = False,
) -> Path:
    """Write :func:`comparison_grid` as a PNG, upscaled ``scale`` times (nearest), optionally with PSNR captions
    under every reconstruction."""
    img = to_pil(comparison_grid(originals, reconstructions, ncol), scale)
    if captions:
        values = psnr(originals, reconstructions).tolist()
        w, pad = originals.shape[-1] * scale, 2 * scale
        pair_h = 2 * (originals.shape[-2] * scale + pad)  # a row of originals and one of reconstructions
        blocks = range(0, len(values), ncol)
        canvas = Image.new("RGB", (img.width, len(blocks) * (pair_h + pad + 12)), "white")
        draw = ImageDraw.Draw(canvas)
        for k, r in enumerate(blocks):  # a 12-pixel caption strip under every pair of rows
            y = k * (pair_h + pad + 12)
            canvas.paste(img.crop((0, k * pair_h, img.width, (k + 1) * pair_h + pad)), (0, y))
            for j, v in enumerate(values[r : r + ncol]):
                draw.text((pad + j * (w + pad), y + pair_h + pad - 1), f"{v:.1f}dB", fill=(0, 0, 0))
        img = canvas
    return save_picture(img, path)
