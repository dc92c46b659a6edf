"""Reconstruction FID (Heusel et al. 2017, https://arxiv.org/abs/1706.08500) of images against their
reconstructions. Numbers only compare with the same network and resizing, so we use torch-fidelity's Inception
(the TF-1 graph ported bit-exactly, TF-compatible resizing to 299x299) and torchmetrics' statistics, with the
weights read from a file the user names, never downloaded."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from vqgan.losses.perceptual import default_hub_dir, resolve_weights_file
from vqgan.metrics.reconstruction import frames, to_uint8, to_unit

# torch-fidelity's Inception-v3 weights (the TF-1 2015-12-05 graph converted to PyTorch) and where they live.
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
FID_FEATURE_DIMS = (64, 192, 768, 2048)


def inception_help(path: str | None = None) -> str:
    """How to get the Inception weights file, for error messages."""
    where = f"{path!r} does not exist. " if path else "no Inception weights file was given. "
    return (
        f"rFID needs torch-fidelity's Inception-v3 weights ({INCEPTION_FILE}) and {where}"
        f"On a machine with internet access download\n  {INCEPTION_URL}\n"
        f"copy it here and pass --fid-weights /path/to/{INCEPTION_FILE} (or put it in {default_hub_dir()}). "
        "Nothing is downloaded at run time."
    )


class ReconstructionFID(nn.Module):
    """Accumulates Inception features of originals and reconstructions: ``update(x, rec)`` takes images (or
    clips: their frames) in [-1, 1], quantised to uint8 as saved PNGs are. ``weights``: the Inception file
    (``None``: torch's hub cache); ``feature``: its layer, 2048 (pool3, the standard) or 64/192/768;
    ``extractor``: instead, a network taking uint8 images with an int ``num_features`` (tests)."""

    def __init__(self, weights: str | Path | None = None, feature: int = 2048, extractor: nn.Module | None = None):
        super().__init__()
        from torchmetrics.image.fid import FrechetInceptionDistance

        self.weights_file: Path | None = None
        self.feature = feature
        if extractor is not None:
            self.fid = FrechetInceptionDistance(feature=extractor, normalize=False)
            return
        if feature not in FID_FEATURE_DIMS:
            raise ValueError(f"FID feature layer must be one of {FID_FEATURE_DIMS}, got {feature}")
        path = resolve_weights_file(None if weights is None else str(weights), INCEPTION_FILE, inception_help)
        # Opened with weights_only=True first: a file that would execute code when unpickled is refused before
        # torch-fidelity (which loads with weights_only=False) ever reads it.
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            why = f"{path} is not a plain PyTorch state dict of Inception-v3 weights"
            raise ValueError(f"{why}: {str(e).splitlines()[0]}") from None
        if not isinstance(state, dict) or "Conv2d_1a_3x3.conv.weight" not in state:
            raise ValueError(f"{path} is not torch-fidelity's Inception-v3 state dict ({INCEPTION_FILE}); "
                             f"see {INCEPTION_URL}")
        self.weights_file = path
        # An int ``feature``: torchmetrics builds torch-fidelity's extractor from our file (no download).
        self.fid = FrechetInceptionDistance(
            feature=feature, normalize=False, feature_extractor_weights_path=str(self.weights_file)
        )

    @torch.no_grad()
    def update(self, originals: torch.Tensor, reconstructions: torch.Tensor) -> None:
        for images, real in ((originals, True), (reconstructions, False)):
            u = to_uint8(to_unit(frames(images) if images.dim() == 5 else images))  # as saved: rounded
            self.fid.update(u.expand(-1, 3, -1, -1), real=real)  # grey repeated to RGB

    def compute(self) -> float:
        return float(self.fid.compute())

    @property
    def num_images(self) -> int:
        return int(self.fid.real_features_num_samples)


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))`` of two Gaussians (torchmetrics' implementation)."""
    from torchmetrics.image.fid import _compute_fid

    return float(_compute_fid(mu1.double(), sigma1.double(), mu2.double(), sigma2.double()))
