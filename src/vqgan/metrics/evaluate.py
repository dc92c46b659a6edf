"""Reconstruction metrics of a tokenizer over a whole evaluation set, with the protocol that produced them
(numbers are only comparable when the protocol is)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader

from vqgan.metrics.codebook import CodebookUsage
from vqgan.metrics.reconstruction import frames, psnr, ssim
from vqgan.progress import track

METRIC_NAMES = ("psnr", "ssim", "lpips", "fid")


@dataclass
class EvaluationResult:
    """Metrics and the protocol that produced them (both JSON-serialisable)."""

    metrics: dict[str, Any]
    protocol: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def reconstruction_metrics(
    model: torch.nn.Module, loader: DataLoader, device: str | torch.device = "cpu",
    lpips: torch.nn.Module | None = None, fid: Any | None = None, progress: bool = False,
) -> dict[str, Any]:
    """Means over images of PSNR, SSIM (on [0, 1], reconstructions clamped) and, given ``lpips``, LPIPS; rFID
    of all originals against all reconstructions given ``fid``; codebook usage, perplexity and code entropy of
    the whole set's histogram; the number of images and of skipped (unreadable) items."""
    model = model.to(device).eval()
    lpips, fid = (None if m is None else m.to(device) for m in (lpips, fid))
    usage = CodebookUsage(model.quantize.codebook_size, model.quantize.num_stages).to(device)
    scores = {"psnr": psnr, "ssim": ssim} | ({} if lpips is None else {"lpips": lpips})
    sums = dict.fromkeys(scores, 0.0)
    n = skipped = 0
    try:
        total = len(loader)
    except TypeError:
        total = None
    for batch in track(loader, total, progress, "evaluating"):
        skipped += int(batch.pop("skipped", 0))
        if "image" not in batch:
            continue
        x = batch["image"].to(device, non_blocking=True)
        if x.dim() == 5 and not hasattr(model, "time_factor"):  # clips through an image tokenizer: frame by frame
            x = frames(x)
        out = model(x)
        rec = out.reconstruction.float()
        for name, score in scores.items():
            sums[name] += float(score(x, rec).sum())
        if fid is not None:
            fid.update(x, rec)
        usage.update(out.indices)
        n += x.shape[0]
    if n == 0:
        raise ValueError("no readable images to evaluate")
    stats = usage.compute()
    metrics: dict[str, Any] = {name: s / n for name, s in sums.items()}
    if fid is not None:
        if fid.num_images < 2:
            raise ValueError(f"rFID needs at least 2 images, the evaluation set has {fid.num_images}")
        metrics["rfid"] = fid.compute()
    return metrics | {
        "codebook_usage": float(stats["usage"]),
        "perplexity": float(stats["perplexity"]),
        "code_entropy_bits": float(stats["entropy"]),
        "codes_used": int(stats["used"]),
        "codebook_size": model.quantize.codebook_size,
        "num_images": n,
        "skipped": skipped,
    }


def describe_preprocessing(data: Any) -> str:
    """A one-line description of how a :class:`~vqgan.config.DataConfig` turns files into evaluation images."""
    r = data.resolution
    capped = data.val_size < 2**31 - 1  # the evaluate command lifts the cap to take the whole split
    mode = "grayscale" if data.channels == 1 else "RGB"
    if data.kind == "builtin":
        return (
            f"built-in validation photos scaled by {data.builtin_scale}, a fixed grid of non-overlapping {r}x{r} crops"
            f"{f' (evenly thinned to at most {data.val_size})' if capped else ''}, {mode}, no flip, mapped to [-1, 1]"
        )
    if data.kind == "folder":
        side = max(data.resize or r, r)
        src = data.val_root or f"held-out files of {data.root}"
        return (
            f"{src}: shorter side resized to {side} (PIL bicubic), centre crop {r}x{r}, {mode}, no flip, "
            f"mapped to [-1, 1]{f' (first {data.val_size} images)' if capped else ''}"
        )
    extra = f", {data.frames} frames (stride {data.frame_stride})" if data.kind in ("video_folder", "ucf101") else ""
    return f"data.kind={data.kind} validation split, {r}x{r}{extra}, {mode}, mapped to [-1, 1]"


def evaluate_tokenizer(
    model: torch.nn.Module, loader: DataLoader, data: Any, device: str | torch.device = "cpu",
    lpips: torch.nn.Module | None = None, fid: Any | None = None, progress: bool = False,
    checkpoint: str | None = None,
) -> EvaluationResult:
    """:func:`reconstruction_metrics` with the protocol (images, resolution, preprocessing, backbone files,
    device); ``data`` is the :class:`~vqgan.config.DataConfig` the loader was built from."""
    metrics = reconstruction_metrics(model, loader, device, lpips=lpips, fid=fid, progress=progress)
    cfg = getattr(model, "config", None)
    protocol: dict[str, Any] = {
        "checkpoint": checkpoint,
        "num_images": metrics["num_images"],
        "skipped_unreadable": metrics["skipped"],
        "resolution": [data.resolution, data.resolution],
        "channels": data.channels,
        "data": {"kind": data.kind, "root": data.root, "val_root": data.val_root},
        "preprocessing": describe_preprocessing(data),
        "psnr": "per image on [0, 1] (reconstruction clamped), data range 1, mean over images",
        "ssim": "per image, Gaussian window 11, sigma 1.5 (Wang et al. 2004; torchmetrics), mean over images",
        "codebook": f"histogram of all code indices over the set, {metrics['codebook_size']} codes",
        "device": str(device),
    }
    if cfg is not None:
        protocol["tokens_per_image"] = [cfg.latent_resolution, cfg.latent_resolution]
        protocol["downsample_factor"] = cfg.spatial_factor
    if lpips is not None:
        protocol["lpips"] = {
            "backbone": getattr(lpips, "net", None),
            "backbone_weights": str(getattr(lpips, "weights_file", "")),
            "linear_layers": "lpips package v0.1 calibration weights",
            "input": "images in [-1, 1] at their resolution"
            + (f"; upsampled (bilinear) to a {lpips.min_side}-pixel shorter side, the backbone's minimum"
               if hasattr(lpips, "min_side") and data.resolution < lpips.min_side else ""),
        }
    if fid is not None:
        protocol["rfid"] = {
            "network": "Inception-v3 (torch-fidelity port of the TF-1 2015-12-05 graph)",
            "weights": str(fid.weights_file) if fid.weights_file else "custom feature extractor",
            "feature": fid.feature,
            "resize": "uint8 images, bilinear (TF-1 compatible) to 299x299",
            "statistics": "torchmetrics FrechetInceptionDistance, originals vs reconstructions",
        }
    return EvaluationResult(metrics=metrics, protocol=protocol)
