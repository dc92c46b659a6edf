"""Image preparation shared by the datasets: PIL / numpy -> float tensor in [-1, 1], resize, crop, flip, and the
hue/saturation augmentation of the built-in photos."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Convert any PIL mode (RGBA, CMYK, P, I;16, LA, ...) to ``RGB`` (3 channels) or ``L`` (1 channel):
    16-bit images are rescaled to 8 bits rather than clipped, transparency is composited over white."""
    if img.mode == "I" or img.mode.startswith("I;16"):  # I;16, I;16B, I;16L, I;16N and 32-bit integers
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / hi * 255.0, 0, 255).astype(np.uint8))
    if img.mode == "F":  # float images (e.g. 32-bit TIFF): min-max scaled, non-finite pixels set to the minimum
        arr = np.asarray(img, dtype=np.float64)
        finite = np.isfinite(arr)
        lo, hi = (arr[finite].min(), arr[finite].max()) if finite.any() else (0.0, 0.0)
        arr = (np.where(finite, arr, lo) - lo) / max(hi - lo, 1e-12) * 255.0
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if img.mode in ("RGBA", "RGBa", "LA", "La", "PA") or (img.mode in ("P", "L", "RGB") and "transparency" in img.info):
        img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img.convert("RGBA"))
    return img.convert("RGB" if channels == 3 else "L")


def to_tensor(img: Image.Image | np.ndarray) -> torch.Tensor:
    """``(C, H, W)`` float tensor in [-1, 1] from a uint8 PIL image or HxW(xC) array."""
    arr = np.array(img)  # a writable, contiguous copy: PIL's buffer is read-only
    return torch.from_numpy(arr.reshape(*arr.shape[:2], -1)).permute(2, 0, 1).float() / 127.5 - 1.0


def resize_shorter(img: Image.Image, size: int) -> Image.Image:
    """Resize so that the shorter side is ``size`` (bicubic with antialiasing, as PIL does when reducing)."""
    if (scale := size / min(img.size)) == 1:
        return img
    return img.resize(tuple(max(size, round(n * scale)) for n in img.size), Image.BICUBIC)


def crop(img: Image.Image, size: int, random: bool, generator: torch.Generator | None = None) -> Image.Image:
    """Square crop of side ``size``: random (with ``generator``) or centred."""
    w, h = img.size
    if random:
        x, y = (int(torch.randint(0, n - size + 1, (1,), generator=generator)) for n in (w, h))
    else:
        x, y = (w - size) // 2, (h - size) // 2
    return img.crop((x, y, x + size, y + size))


def rotate_hue(x: torch.Tensor, shift: float) -> torch.Tensor:
    """An RGB image in [-1, 1] with its hue rotated by ``shift`` turns of the colour circle (0.5: opposite
    hues), by torchvision's ``adjust_hue``, whose factor is limited to [-0.5, 0.5] (``shift`` is wrapped)."""
    from torchvision.transforms.v2.functional import adjust_hue

    shift = (shift + 0.5) % 1.0 - 0.5
    return adjust_hue((x + 1) / 2, shift) * 2 - 1


def jitter_colour(x: torch.Tensor, hue: float, saturation: float, generator: torch.Generator) -> torch.Tensor:
    """Rotate the hue of an RGB image in [-1, 1] by a uniform random shift in ``[-hue, hue]`` turns and scale
    its saturation by a uniform random factor in ``[1 - saturation, 1 + saturation]``; grey images are kept.
    Unlike torchvision's ``ColorJitter``, draws from ``generator``: the same crops whatever the workers."""
    from torchvision.transforms.v2.functional import adjust_saturation

    if x.shape[0] != 3 or (hue <= 0 and saturation <= 0):
        return x
    h, s = torch.rand(2, generator=generator).tolist()
    if hue > 0:
        x = rotate_hue(x, (2 * h - 1) * hue)
    if saturation > 0:
        x = adjust_saturation((x + 1) / 2, 1 + (2 * s - 1) * saturation) * 2 - 1
    return x
