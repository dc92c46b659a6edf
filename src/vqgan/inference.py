"""Inference helpers used by the CLI: reconstruct image files with a trained tokenizer.

Bad input: a folder's unreadable files (corrupt, truncated, not an image) are skipped with a warning that names
each one, and counted (:attr:`Reconstructions.skipped`), so that one bad file never loses the rest of the folder;
a single file named on its own that can't be read raises ``ValueError`` with a one-line message.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from vqgan.data.images import IMAGE_EXTENSIONS, list_images, load_image
from vqgan.data.transforms import crop, resize_shorter, to_tensor
from vqgan.metrics.reconstruction import psnr, to_unit


def _save(t: torch.Tensor, path: Path) -> None:
    arr = (to_unit(t).permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8")
    Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).save(path)


log = logging.getLogger(__name__)


@dataclass
class Reconstructions:
    """What :func:`reconstruct_files` did.

    Attributes:
        records: one ``{"file", "psnr", "size"}`` per reconstructed image, in file order.
        skipped: one ``{"file", "error"}`` per file that could not be read (each also logged as a warning).
    """

    records: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)


@torch.no_grad()
def reconstruct_files(
    model: torch.nn.Module, input_path: str | Path, output_dir: str | Path, resolution: int | None = None,
    full_size: bool = False, device: str = "cpu",
) -> Reconstructions:
    """Reconstruct an image file or every image under a folder.

    Each image is resized (shorter side) and centre-cropped to ``resolution`` (default: the model's), or, with
    ``full_size``, kept whole and cropped to a multiple of the downsampling factor. Writes ``NAME_rec.png`` and a
    side-by-side ``NAME_compare.png`` (original | reconstruction) per image; returns per-image PSNR records and
    the files skipped because they could not be read.

    Raises:
        ValueError: ``input_path`` is a single file that is not an image or can't be read.
    """
    input_path, output_dir = Path(input_path), Path(output_dir)
    files = [input_path] if input_path.is_file() else list_images(input_path)
    if input_path.is_file() and input_path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise ValueError(f"{input_path} is not an image ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    output_dir.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    res = resolution or cfg.resolution
    f = cfg.downsample_factor
    model = model.to(device).eval()
    out = Reconstructions()
    for path in files:
        try:
            img = load_image(path, cfg.in_channels)
        except Exception as e:  # noqa: BLE001 - any decoder failure means "unreadable"
            if input_path.is_file():
                raise ValueError(f"cannot read image {path}: {type(e).__name__}: {e}") from None
            log.warning("skipping unreadable image %s: %s: %s", path, type(e).__name__, e)
            out.skipped.append({"file": str(path), "error": f"{type(e).__name__}: {e}"})
            continue
        if full_size:
            w, h = (img.width // f) * f, (img.height // f) * f
            img = img.crop((0, 0, w, h))
        else:
            img = crop(resize_shorter(img, res), res, random=False)
        x = to_tensor(img)[None].to(device)
        rec = model(x).reconstruction.clamp(-1, 1)
        stem = path.stem
        _save(rec[0], output_dir / f"{stem}_rec.png")
        _save(torch.cat([x[0], rec[0]], dim=-1), output_dir / f"{stem}_compare.png")
        out.records.append({"file": str(path), "psnr": float(psnr(x, rec)[0]), "size": [img.height, img.width]})
    return out
