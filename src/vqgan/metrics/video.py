"""Quality figures for generated and predicted clips, computed the same way for every model. FVD (Unterthiner
et al. 2018, https://arxiv.org/abs/1812.01717) reads the TorchScript I3D of the public PyTorch FVD code
(StyleGAN-V, "fvd-comparison": the Kinetics-400 I3D of the original TF code, called with ``rescale=False,
resize=False, return_features=True`` on ``(B, 3, T, 224, 224)`` clips in [-1, 1]); it is never downloaded."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from vqgan.losses.perceptual import default_hub_dir, resolve_weights_file
from vqgan.metrics.fid import frechet_distance
from vqgan.metrics.reconstruction import frames, psnr, ssim, to_unit

I3D_FILE = "i3d_torchscript.pt"
I3D_URL = "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt"
I3D_RESOLUTION = 224
# The PSNR cap: frames equal up to 8-bit rounding (MSE floored at uniform quantisation noise, (1/255)^2 / 12,
# about 58.9 dB): identical frames (a still digit, a "copy the last frame" baseline) keep means finite.
PSNR_CAP = 10 * math.log10(12 * 255**2)


def frame_prediction_scores(predicted: torch.Tensor, target: torch.Tensor, context_frames: int = 0) -> dict:
    """``{"psnr_per_frame", "ssim_per_frame", "psnr_future", "ssim_future", "context_frames"}`` of clips
    ``(B, C, T, H, W)`` in [-1, 1] against ``target`` (MAGVIT's frame prediction): PSNR (dB, capped at
    :data:`PSNR_CAP`), SSIM averaged over clips; ``future`` means leave out the given ``context_frames``."""
    if predicted.shape != target.shape or predicted.dim() != 5:
        shapes = f"{tuple(predicted.shape)} and {tuple(target.shape)}"
        raise ValueError(f"expected two batches of clips of one shape, got {shapes}")
    b, t = predicted.shape[0], predicted.shape[2]
    if not 0 <= context_frames < t:
        raise ValueError(f"context_frames={context_frames} must be in [0, {t})")
    x, y = frames(predicted).float().cpu(), frames(target).float().cpu()
    p = psnr(x, y).clamp(max=PSNR_CAP).view(b, t).mean(0)
    s = ssim(x, y).view(b, t).mean(0)
    return {
        "psnr_per_frame": [round(float(v), 3) for v in p],
        "ssim_per_frame": [round(float(v), 4) for v in s],
        "psnr_future": float(p[context_frames:].mean()),
        "ssim_future": float(s[context_frames:].mean()),
        "context_frames": context_frames,
    }


def motion_profile(clips: torch.Tensor) -> torch.Tensor:
    """Mean absolute frame-to-frame change ``|x_t - x_{t-1}|`` (in [0, 1] units) per transition ``(T - 1,)``
    over clips ``(B, C, T, H, W)``: a prior whose clips freeze or flicker shows here."""
    x = to_unit(clips.float().cpu())
    return (x[:, :, 1:] - x[:, :, :-1]).abs().mean((0, 1, 3, 4))


def i3d_help(path: str | None = None) -> str:
    """How to get the I3D file, for error messages."""
    where = f"{path!r} does not exist. " if path else "no I3D file was given. "
    return (
        f"FVD needs the TorchScript I3D network ({I3D_FILE}, Kinetics-400, as used by StyleGAN-V and the public "
        f"PyTorch FVD code) and {where}On a machine with internet access download\n  {I3D_URL}\n"
        f"copy it here and pass its path (--fvd-weights /path/to/{I3D_FILE}), or put it in {default_hub_dir()}. "
        "Nothing is downloaded at run time; the set distances (sliced Wasserstein) need no file."
    )


def i3d_input(clips: torch.Tensor, resolution: int = I3D_RESOLUTION) -> torch.Tensor:
    """Clips ``(B, C, T, H, W)`` in [-1, 1] as I3D takes them: RGB (grey repeated), shorter side resized to
    ``resolution`` (bilinear, antialiased) and centre-cropped, still in [-1, 1] (the reference preprocessing)."""
    x = clips.float().clamp(-1, 1).expand(-1, 3, -1, -1, -1)  # grey repeated to RGB
    b, c, t, h, w = x.shape
    scale = resolution / min(h, w)
    size = (max(resolution, round(h * scale)), max(resolution, round(w * scale)))
    x = F.interpolate(frames(x), size=size, mode="bilinear", align_corners=False, antialias=scale < 1)
    top, left = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    x = x[..., top : top + resolution, left : left + resolution]
    return x.reshape(b, t, c, resolution, resolution).transpose(1, 2).contiguous()


class FrechetVideoDistance:
    """FVD between a real and a generated set of clips ``(B, C, T, H, W)`` in [-1, 1] given to :meth:`update`:
    the Fréchet distance of Gaussians fitted to their I3D features (at least 9 frames; the reference protocol
    uses 16). ``weights``: the I3D file (``None``: torch's hub cache), or ``extractor``: a stand-in module."""

    def __init__(
        self, weights: str | Path | None = None, device: str | torch.device = "cpu",
        extractor: torch.nn.Module | None = None, resolution: int = I3D_RESOLUTION,
    ):
        self.device, self.resolution = torch.device(device), resolution
        self.features: dict[bool, list[torch.Tensor]] = {True: [], False: []}
        if extractor is not None:
            self.detector = extractor.to(self.device).eval()
            return
        # TorchScript is run by torch's interpreter, not unpickled: loading it runs no arbitrary Python (it is
        # still the user's file to trust).
        file = resolve_weights_file(None if weights is None else str(weights), I3D_FILE, i3d_help)
        try:
            self.detector = torch.jit.load(str(file), map_location=self.device).eval()
        except RuntimeError as e:
            why = str(e).splitlines()[0]
            raise ValueError(f"{file} is not a TorchScript I3D network ({I3D_FILE}): {why}") from None

    @torch.no_grad()
    def features_of(self, clips: torch.Tensor) -> torch.Tensor:
        x = i3d_input(clips.to(self.device), self.resolution)
        return self.detector(x, rescale=False, resize=False, return_features=True).double().cpu()

    def update(self, clips: torch.Tensor, real: bool) -> None:
        self.features[real].append(self.features_of(clips))

    def compute(self) -> float:
        stats = []
        for real in (True, False):
            if sum(len(f) for f in self.features[real]) < 2:
                raise ValueError(f"FVD needs at least 2 {'real' if real else 'generated'} clips")
            f = torch.cat(self.features[real])
            stats += [f.mean(0), torch.cov(f.T)]
        return frechet_distance(*stats)
