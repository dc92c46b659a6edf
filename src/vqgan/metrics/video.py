"""Quality figures for generated and predicted clips, computed the same way for every model.

Without any download:

* :func:`frame_prediction_scores`: per-frame PSNR and SSIM of predicted frames against the true continuation
  (the frame-prediction protocol of MAGVIT and OmniTokenizer, here on whatever data the user has).
* :func:`motion_profile` and the flicker of :func:`vqgan.viz.video.temporal_consistency`: how much a clip changes
  from frame to frame, and how much change a prediction adds or removes against the truth.
* the set distances of :func:`vqgan.metrics.distribution.clip_set_distances` (sliced Wasserstein on frames, on
  random-conv features, colour, and on frame differences) between generated and held-out clips.

With the user's I3D file: :class:`FrechetVideoDistance` (FVD, Unterthiner et al. 2018,
https://arxiv.org/abs/1812.01717): the Fréchet distance between Gaussians fitted to I3D features of the two sets.
We read the TorchScript I3D that the public PyTorch FVD implementations share (StyleGAN-V, "fvd-comparison": the
Kinetics-400 I3D of the original TF code, called with ``rescale=False, resize=False, return_features=True`` on
``(B, 3, T, 224, 224)`` clips in [-1, 1]), so numbers compare with theirs. It is never downloaded: the file must be
named (or sit in torch's hub cache), as for LPIPS and Inception.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from vqgan.losses.perceptual import default_hub_dir, resolve_weights_file
from vqgan.metrics.fid import frechet_distance
from vqgan.metrics.reconstruction import psnr, ssim, to_unit

I3D_FILE = "i3d_torchscript.pt"
I3D_URL = "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt"
I3D_RESOLUTION = 224
# PSNR of a frame equal to its target up to 8-bit rounding: the MSE floored at the variance of uniform
# quantisation noise, (1/255)^2 / 12, i.e. about 58.9 dB. Frames can be identical (a digit that did not move, a
# "copy the last frame" baseline); capping keeps a mean over clips finite and no higher than what a saved frame
# can show.
PSNR_CAP = 10 * math.log10(12 * 255**2)


def frame_prediction_scores(predicted: torch.Tensor, target: torch.Tensor, context_frames: int = 0) -> dict:
    """Per-frame PSNR (dB, each capped at :data:`PSNR_CAP`) and SSIM of ``predicted`` against ``target`` clips
    ``(B, C, T, H, W)`` in [-1, 1], averaged over the clips.

    Args:
        context_frames: the first frames were given, not predicted: they are reported (a check of the
            tokenizer's reconstruction of the context) but left out of the ``future`` means.

    Returns:
        ``{"psnr_per_frame": [T], "ssim_per_frame": [T], "psnr_future", "ssim_future", "context_frames"}``.
    """
    if predicted.shape != target.shape or predicted.dim() != 5:
        raise ValueError(f"expected two batches of clips of one shape, got {tuple(predicted.shape)} and {tuple(target.shape)}")
    t = predicted.shape[2]
    if not 0 <= context_frames < t:
        raise ValueError(f"context_frames={context_frames} must be in [0, {t})")
    frames = lambda x: x.transpose(1, 2).flatten(0, 1).float().cpu()  # noqa: E731 - (B T, C, H, W)
    b = predicted.shape[0]
    p = psnr(frames(predicted), frames(target)).clamp(max=PSNR_CAP).view(b, t).mean(0)
    s = ssim(frames(predicted), frames(target)).view(b, t).mean(0)
    return {
        "psnr_per_frame": [round(float(v), 3) for v in p],
        "ssim_per_frame": [round(float(v), 4) for v in s],
        "psnr_future": float(p[context_frames:].mean()),
        "ssim_future": float(s[context_frames:].mean()),
        "context_frames": context_frames,
    }


def motion_profile(clips: torch.Tensor) -> torch.Tensor:
    """Mean absolute frame-to-frame change ``|x_t - x_{t-1}|`` in [0, 1] pixel units for every transition,
    averaged over clips ``(B, C, T, H, W)``: ``(T - 1,)``. Generated clips should move as much as real ones (a
    prior that freezes or flickers shows here)."""
    x = to_unit(clips.float().cpu())
    return (x[:, :, 1:] - x[:, :, :-1]).abs().mean((0, 1, 3, 4))


# -- FVD ----------------------------------------------------------------------------------------------------------
def i3d_help(path: str | None = None) -> str:
    """How to get the I3D file, for error messages."""
    where = f"{path!r} does not exist. " if path else "no I3D file was given. "
    return (
        f"FVD needs the TorchScript I3D network ({I3D_FILE}, Kinetics-400, as used by StyleGAN-V and the public "
        f"PyTorch FVD code) and {where}On a machine with internet access download\n  {I3D_URL}\n"
        f"copy it here and pass its path (--fvd-weights /path/to/{I3D_FILE}), or put it in {default_hub_dir()}. "
        "Nothing is downloaded at run time; the set distances (sliced Wasserstein) need no file."
    )


def resolve_i3d_file(path: str | Path | None) -> Path:
    """The I3D file: ``path`` if given, else ``I3D_FILE`` in torch's hub cache; raises
    :class:`~vqgan.losses.perceptual.BackboneWeightsMissing` (a ``FileNotFoundError``) saying what to get."""
    return resolve_weights_file(None if path is None else str(path), I3D_FILE, i3d_help)


def load_i3d(path: str | Path | None, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """The TorchScript I3D from a local file (see :func:`resolve_i3d_file`). A TorchScript archive holds the
    network as TorchScript code run by torch's interpreter, not a Python pickle, so loading it does not run
    arbitrary Python; it is still the user's file to trust."""
    file = resolve_i3d_file(path)
    try:
        return torch.jit.load(str(file), map_location=device).eval()
    except RuntimeError as e:
        raise ValueError(f"{file} is not a TorchScript I3D network ({I3D_FILE}): {str(e).splitlines()[0]}") from None


def i3d_input(clips: torch.Tensor, resolution: int = I3D_RESOLUTION) -> torch.Tensor:
    """Clips ``(B, C, T, H, W)`` in [-1, 1] as I3D takes them: RGB (grey repeated), shorter side resized to
    ``resolution`` (bilinear, antialiased) and centre-cropped, still in [-1, 1] (the reference preprocessing)."""
    x = clips.float().clamp(-1, 1)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1, -1)
    b, c, t, h, w = x.shape
    frames = x.transpose(1, 2).reshape(b * t, c, h, w)
    scale = resolution / min(h, w)
    size = (max(resolution, round(h * scale)), max(resolution, round(w * scale)))
    frames = F.interpolate(frames, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)
    top, left = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    frames = frames[..., top : top + resolution, left : left + resolution]
    return frames.reshape(b, t, c, resolution, resolution).transpose(1, 2).contiguous()


class FrechetVideoDistance:
    """FVD between a real and a generated set of clips, accumulated batch by batch.

    ``update(clips, real=...)`` takes ``(B, C, T, H, W)`` in [-1, 1]; ``compute()`` fits a Gaussian to each set's
    I3D features and returns their Fréchet distance (:func:`vqgan.metrics.fid.frechet_distance`, the same code as
    rFID). I3D wants at least 9 frames (its temporal pooling); the reference protocol uses 16.

    Args:
        weights: the TorchScript I3D file (``None``: torch's hub cache), or ``extractor``: any module with the
            same call signature (tests).
        resolution: frame side given to the network (224 for I3D).
    """

    def __init__(
        self, weights: str | Path | None = None, device: str | torch.device = "cpu",
        extractor: torch.nn.Module | None = None, resolution: int = I3D_RESOLUTION,
    ):
        self.device, self.resolution = torch.device(device), resolution
        self.detector = extractor.to(self.device).eval() if extractor is not None else load_i3d(weights, self.device)
        self.features: dict[bool, list[torch.Tensor]] = {True: [], False: []}

    @torch.no_grad()
    def features_of(self, clips: torch.Tensor) -> torch.Tensor:
        x = i3d_input(clips.to(self.device), self.resolution)
        return self.detector(x, rescale=False, resize=False, return_features=True).double().cpu()

    def update(self, clips: torch.Tensor, real: bool) -> None:
        self.features[real].append(self.features_of(clips))

    def compute(self) -> float:
        stats = []
        for real in (True, False):
            if not self.features[real] or sum(len(f) for f in self.features[real]) < 2:
                raise ValueError(f"FVD needs at least 2 {'real' if real else 'generated'} clips")
            f = torch.cat(self.features[real])
            stats += [f.mean(0), torch.cov(f.T)]
        return frechet_distance(*stats)
