"""A dataset over any folder of images (recursive), e.g. CelebA's ``img_align_celeba/`` or FFHQ's numbered
sub-folders. Unreadable files are skipped: the item comes back as ``None``, :func:`collate_skip` drops it and
counts it, and the training loop logs the count."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from vqgan.data.transforms import crop, resize_shorter, to_mode, to_tensor

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class EmptyDatasetError(ValueError):
    """The data source holds no usable items; raised before training starts."""


def list_images(root: str | Path) -> list[Path]:
    """Image files under ``root``, recursively, sorted (deterministic order)."""
    root = Path(root).expanduser()
    if not root.exists():
        raise EmptyDatasetError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise EmptyDatasetError(f"{root} is not a folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise EmptyDatasetError(
            f"no images found under {root} (looked recursively for {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return files


class ImageFolder(Dataset):
    """Images under a folder as ``{"image": (C, H, W) in [-1, 1]}``, resized (shorter side) and cropped.

    Args:
        root: folder, searched recursively; or an explicit list of files.
        resolution: output side.
        resize: shorter side before cropping (default: ``resolution``).
        random_crop, flip: augmentations for training (validation uses centre crops, no flip).
        channels: 3 (RGB) or 1 (grayscale).
    """

    def __init__(
        self,
        root: str | Path | list[Path],
        resolution: int,
        resize: int | None = None,
        random_crop: bool = False,
        flip: bool = False,
        channels: int = 3,
    ):
        self.files = list(root) if isinstance(root, list) else list_images(root)
        self.resolution, self.resize = resolution, resize or resolution
        self.random_crop, self.flip, self.channels = random_crop, flip, channels

    def __len__(self) -> int:
        return len(self.files)

    def load(self, path: Path) -> torch.Tensor:
        with Image.open(path) as img:
            img.load()
            img = to_mode(img, self.channels)
        if min(img.size) < 2:
            raise ValueError(f"image too small: {img.size}")
        img = resize_shorter(img, max(self.resize, self.resolution))
        img = crop(img, self.resolution, self.random_crop)
        x = to_tensor(img)
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x

    def __getitem__(self, i: int) -> dict[str, torch.Tensor] | None:
        path = self.files[i]
        try:
            return {"image": self.load(path)}
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
            log.warning("skipping unreadable image %s: %s", path, e)
            return None


def collate_skip(items: list[dict | None]) -> dict[str, torch.Tensor]:
    """Default collation after dropping ``None`` (unreadable) items; ``batch["skipped"]`` counts them."""
    from torch.utils.data import default_collate

    kept = [it for it in items if it is not None]
    skipped = len(items) - len(kept)
    if not kept:
        return {"skipped": torch.tensor(skipped)}
    batch = default_collate(kept)
    batch["skipped"] = torch.tensor(skipped)
    return batch
