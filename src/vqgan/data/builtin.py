"""The built-in dataset: crops of photos shipped by installed packages (scikit-image's for training, a fixed
grid over scikit-learn's ``load_sample_images`` for validation), so that the demo and tests need no download.
The training photos hold almost no green (a model trained on them turns the flower's leaves navy blue):
``hue`` and ``saturation`` jitter training crops so that every colour is seen (``benchmarks/colour.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import ClassVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from vqgan.data.transforms import jitter_colour, to_mode, to_tensor

TRAIN_PHOTOS = (
    "astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry", "retina", "rocket",
    "stereo_motorcycle_0", "stereo_motorcycle_1",
)
VAL_PHOTOS = ("china", "flower")


@cache
def _photo(name: str) -> np.ndarray:
    if name in VAL_PHOTOS:
        from sklearn.datasets import load_sample_image

        return load_sample_image(f"{name}.jpg")
    import skimage.data

    if name.startswith("stereo_motorcycle"):
        return skimage.data.stereo_motorcycle()[int(name[-1])]
    return getattr(skimage.data, name)()


def load_photo(name: str, scale: float = 1.0, channels: int = 3) -> Image.Image:
    """One of the shipped photos as a PIL image, rescaled by ``scale``."""
    img = to_mode(Image.fromarray(_photo(name)), channels)
    if scale != 1.0:
        img = img.resize(tuple(max(1, round(n * scale)) for n in img.size), Image.BICUBIC)
    return img


@dataclass(eq=False)
class BuiltinPhotos(Dataset):
    """Random crops (``train``, ``length`` per epoch) or a fixed grid of at most ``length`` crops (``val``) of
    the photos scaled by ``scale``; training crops get ``hue`` and ``saturation`` colour jitter at most."""

    split: str = "train"
    resolution: int = 32
    scale: float = 1.0
    length: int = 4096
    flip: bool = True
    channels: int = 3
    seed: int = 0
    hue: float = 0.0
    saturation: float = 0.0
    # Crops are a function of (seed, epoch, index): a ResumableSampler's global indices (epoch * n + i) give new
    # crops every epoch, identical before and after a resume.
    accepts_global_index: ClassVar[bool] = True

    def __post_init__(self):
        if self.split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', not {self.split!r}")
        if not (0 <= self.hue <= 0.5 and 0 <= self.saturation <= 1):
            raise ValueError(
                f"hue must be in [0, 0.5] and saturation in [0, 1], not {self.hue} and {self.saturation}"
            )
        train, r = self.split == "train", self.resolution
        if not train:  # validation crops are never flipped or jittered: comparable across runs and configs
            self.flip, self.hue, self.saturation = False, 0.0, 0.0
        names = TRAIN_PHOTOS if train else VAL_PHOTOS
        # Training crops are labelled by their source photo; validation photos are other photos (no label).
        self.classes: list[str] = list(TRAIN_PHOTOS) if train else []
        self.images = [to_tensor(load_photo(n, self.scale, self.channels)) for n in names]
        if small := [n for n, im in zip(names, self.images, strict=True) if min(im.shape[1:]) < r]:
            raise ValueError(f"photos {small} are smaller than resolution={r} at scale={self.scale}")
        # Training samples photos in proportion to their area, so every pixel is equally likely to be seen.
        areas = torch.tensor([im.shape[1] * im.shape[2] for im in self.images], dtype=torch.float)
        self.weights, self.epoch = areas / areas.sum(), 0
        if not train:
            # Non-overlapping crops over the validation photos, evenly thinned to at most ``length``.
            crops = [(k, y, x) for k, im in enumerate(self.images)
                     for y in range(0, im.shape[1] - r + 1, r) for x in range(0, im.shape[2] - r + 1, r)]
            if len(crops) > self.length:
                crops = [crops[i] for i in np.linspace(0, len(crops) - 1, self.length).round().astype(int)]
            # A fixed shuffle (the set is unchanged): the first validation batch, whose reconstructions are
            # saved as samples, then spans both photos instead of one strip of sky.
            self.crops = [crops[i] for i in np.random.default_rng(0).permutation(len(crops))]
            self.length = len(self.crops)

    def set_epoch(self, epoch: int) -> None:
        """New random crops each epoch (called by the training loop)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        r = self.resolution
        if self.split == "val":
            k, y, x = self.crops[i]
            return {"image": self.images[k][:, y : y + r, x : x + r].clone()}
        g = torch.Generator().manual_seed(hash((self.seed, self.epoch, i)) % (2**63))
        k = int(torch.multinomial(self.weights, 1, generator=g))
        y, x = (int(torch.randint(0, n - r + 1, (1,), generator=g)) for n in self.images[k].shape[1:])
        crop = self.images[k][:, y : y + r, x : x + r].clone()
        if self.flip and torch.rand((), generator=g) < 0.5:
            crop = crop.flip(-1)
        # Drawn after the flip, so that the crops of a run without jitter are the same as before the option existed.
        crop = jitter_colour(crop, self.hue, self.saturation, g)
        return {"image": crop, "label": torch.tensor(k)}
