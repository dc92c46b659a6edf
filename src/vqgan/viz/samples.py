"""Grids and files of generated images (samples of a stage-2 prior decoded by the tokenizer)."""

from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms.v2.functional import to_pil_image
from torchvision.utils import make_grid

from vqgan.metrics.reconstruction import to_uint8, to_unit


def image_grid(images: torch.Tensor, ncol: int = 8, padding: int = 2) -> torch.Tensor:
    """A ``(3, H, W)`` grid in [0, 1] of images in [-1, 1], ``ncol`` per row."""
    return make_grid(to_unit(images.detach().cpu()), nrow=ncol, padding=padding, pad_value=1.0)


def to_pil(image: torch.Tensor, scale: int = 1) -> Image.Image:
    """A ``(C, H, W)`` tensor in [0, 1] (or a grid) as a PIL image (``L`` for one channel), upscaled ``scale``
    times (nearest). Every picture this package writes goes through here."""
    img = to_pil_image(to_uint8(image.cpu()))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    return img


def save_picture(image: torch.Tensor | Image.Image, path: str | Path, scale: int = 1) -> Path:
    """Write a PIL image, or a ``(C, H, W)`` tensor in [0, 1] upscaled ``scale`` times (nearest)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    (image if isinstance(image, Image.Image) else to_pil(image, scale)).save(path)
    return path


def save_image_grid(images: torch.Tensor, path: str | Path, ncol: int = 8, scale: int | None = None) -> Path:
    """Write :func:`image_grid` as a PNG (small images are upscaled so that they stay visible)."""
    scale = scale if scale is not None else (2 if images.shape[-1] < 64 else 1)
    return save_picture(image_grid(images, ncol), path, scale)


def save_images(images: torch.Tensor, directory: str | Path, names: list[str]) -> list[Path]:
    """Write every image in [-1, 1] as ``DIRECTORY/NAME.png``."""
    return [save_picture(to_unit(img.detach().cpu()), Path(directory, f"{name}.png"))
            for img, name in zip(images, names, strict=True)]
