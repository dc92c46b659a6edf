"""A dataset over any folder of images (recursive). A file that can't be decoded (corrupt, truncated, not an
image, a decompression bomb, 1 pixel wide) comes back as ``None`` with a warning; :func:`collate_skip` drops
and counts it (``batch["skipped"]``, logged as ``train/skipped_data``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset, default_collate

from vqgan.data.transforms import crop, resize_shorter, to_mode, to_tensor

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class EmptyDatasetError(ValueError):
    """The data source holds no usable items; raised before training starts."""


def find_files(root: str | Path, extensions: set[str], kind: str) -> list[Path]:
    """Files with one of ``extensions`` under ``root``, recursively, sorted (deterministic order); raises
    :class:`EmptyDatasetError` naming the ``kind`` of files when there are none."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise EmptyDatasetError(f"{kind} folder {root} does not exist or is not a folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in extensions and p.is_file())
    if not files:
        looked = ", ".join(sorted(extensions))
        raise EmptyDatasetError(f"no {kind}s found under {root} (looked recursively for {looked})")
    return files


def list_images(root: str | Path) -> list[Path]:
    """Image files under ``root``, recursively, sorted (deterministic order)."""
    return find_files(root, IMAGE_EXTENSIONS, "image")


def load_image(path: str | Path, channels: int = 3) -> Image.Image:
    """Decode ``path`` fully and convert it to ``RGB`` / ``L``; raises what the decoder raises for a file it
    can't read, and ``ValueError`` for an image with a side below 2 pixels."""
    with Image.open(path) as img:
        img.load()  # decode now: a truncated file fails here, not later inside a worker's transform
        img = ImageOps.exif_transpose(img)  # phone photos store their rotation in EXIF
        img = to_mode(img, channels)
    if min(img.size) < 2:
        raise ValueError(f"image too small: {img.size[0]}x{img.size[1]} pixels")
    return img


@dataclass(eq=False)
class ImageFolder(Dataset):
    """Images under a folder (or a list of files) as ``{"image": (C, H, W) in [-1, 1]}``, shorter side resized
    to ``resize`` (default ``resolution``) and cropped; ``probe`` files are test-decoded when it is built.
    Augmentations depend on ``(seed, index)`` only, so resumed and uninterrupted runs see the same pixels
    (a ``ResumableSampler``'s indices past the end, ``epoch * len + i``, give file ``i`` new ones)."""

    root: str | Path | list[Path]
    resolution: int
    resize: int | None = None
    random_crop: bool = False
    flip: bool = False
    channels: int = 3
    seed: int = 0
    probe: int = 16
    accepts_global_index: ClassVar[bool] = True

    def __post_init__(self):
        self.files = list(self.root) if isinstance(self.root, list) else list_images(self.root)
        if self.probe and self.files:
            self.check_readable(self.probe)

    def check_readable(self, probe: int = 16) -> int:
        """Decode files of an evenly spread sample of ``probe`` until one is readable; return how many were tried.
        Raises :class:`EmptyDatasetError` (with the first errors) when none can be read."""
        sample = self.files[:: max(1, len(self.files) // probe)][:probe]
        errors = []
        for path in sample:
            try:
                load_image(path, self.channels)
                return len(errors) + 1
            except Exception as e:  # noqa: BLE001 - any decoder failure means "unreadable"
                errors.append(f"{path}: {type(e).__name__}: {e}")
        raise EmptyDatasetError(
            f"none of the {len(sample)} images checked (of {len(self.files)}) can be read, e.g.\n  "
            + "\n  ".join(errors[:5])
        )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor] | None:
        path = self.files[i % len(self.files)]
        g = torch.Generator().manual_seed(hash((self.seed, i)) % (2**63))
        try:
            side = max(self.resize or self.resolution, self.resolution)
            img = resize_shorter(load_image(path, self.channels), side)
            x = to_tensor(crop(img, self.resolution, self.random_crop, g))
        except Exception as e:  # noqa: BLE001 - a bad file must not stop a run that lasts days
            log.warning("skipping unreadable image %s: %s: %s", path, type(e).__name__, e)
            return None
        return {"image": x.flip(-1) if self.flip and torch.rand((), generator=g) < 0.5 else x}


def collate_skip(items: list[dict | None]) -> dict[str, torch.Tensor]:
    """Default collation after dropping ``None`` (unreadable) items; ``batch["skipped"]`` counts them."""
    kept = [it for it in items if it is not None]
    return {**(default_collate(kept) if kept else {}), "skipped": torch.tensor(len(items) - len(kept))}
