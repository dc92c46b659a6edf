"""Inference helpers used by the CLI: reconstruct image files with a trained tokenizer."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from vqgan.data.images import IMAGE_EXTENSIONS, list_images
from vqgan.data.transforms import crop, resize_shorter, to_mode, to_tensor
from vqgan.metrics.reconstruction import psnr, to_unit


def _save(t: torch.Tensor, path: Path) -> None:
    arr = (to_unit(t).permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8")
    Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).save(path)


@torch.no_grad()
def reconstruct_files(
    model: torch.nn.Module, input_path: str | Path, output_dir: str | Path, resolution: int | None = None,
    full_size: bool = False, device: str = "cpu",
) -> list[dict]:
    """Reconstruct an image file or every image under a folder.

    Each image is resized (shorter side) and centre-cropped to ``resolution`` (default: the model's), or, with
    ``full_size``, kept whole and cropped to a multiple of the downsampling factor. Writes ``NAME_rec.png`` and a
    side-by-side ``NAME_compare.png`` (original | reconstruction) per image; returns per-image PSNR records.
    """
    input_path, output_dir = Path(input_path), Path(output_dir)
    files = [input_path] if input_path.is_file() else list_images(input_path)
    if input_path.is_file() and input_path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise ValueError(f"{input_path} is not an image ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    output_dir.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    res = resolution or cfg.resolution
    f = cfg.spatial_factor
    model = model.to(device).eval()
    records = []
    for path in files:
        with Image.open(path) as img:
            img = to_mode(img, cfg.in_channels)
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
        records.append({"file": str(path), "psnr": float(psnr(x, rec)[0]), "size": [img.height, img.width]})
    return records
