"""Video reconstruction output: MP4 and GIF of the original and its reconstruction side by side, a frame grid
with per-frame PSNR and a temporal-consistency figure. Clips are ``(C, T, H, W)`` in [-1, 1], C = 1 or 3."""

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image, ImageDraw
from torchvision.transforms.v2.functional import pil_to_tensor
from torchvision.utils import make_grid

from vqgan.data.video import VideoDecodeError, decode_frames, prepare_clip, video_info
from vqgan.metrics.reconstruction import psnr, to_uint8, to_unit
from vqgan.models.video import VideoVQModel, reconstruct_video
from vqgan.viz.grids import save_comparison
from vqgan.viz.plots import new_figure, save_figure
from vqgan.viz.samples import save_picture


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """``(C, T, H, W)`` in [-1, 1] -> ``(T, H, W, 3)`` uint8 (grayscale repeated to RGB)."""
    return to_uint8(to_unit(video.detach().cpu()).expand(3, -1, -1, -1)).permute(1, 2, 3, 0).numpy()


def per_frame_psnr(original: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """PSNR of every frame (dB), ``(T,)``."""
    t = min(original.shape[1], reconstruction.shape[1])
    return psnr(original[:, :t].transpose(0, 1).cpu(), reconstruction[:, :t].transpose(0, 1).cpu())


def temporal_consistency(original: torch.Tensor, reconstruction: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-transition statistics in [0, 1] pixel units, each ``(T - 1,)``: ``motion_original`` /
    ``motion_reconstruction``, the mean ``|x_t - x_{t-1}|``, and ``flicker``, the mean
    ``|(y_t - y_{t-1}) - (x_t - x_{t-1})|``: the change the tokenizer adds or removes between frames."""
    t = min(original.shape[1], reconstruction.shape[1])
    dx, dy = (to_unit(v[:, :t].cpu()).diff(dim=1) for v in (original, reconstruction))
    return {"motion_original": dx.abs().mean((0, 2, 3)), "motion_reconstruction": dy.abs().mean((0, 2, 3)),
            "flicker": (dy - dx).abs().mean((0, 2, 3))}


def write_video(video: torch.Tensor | np.ndarray, path: str | Path, fps: float = 8.0, scale: int = 1) -> Path:
    """Write a clip as MP4 (H.264 via PyAV, ``yuv420p``, sides padded to even) or GIF (Pillow, looping), chosen by
    the suffix. ``video``: ``(C, T, H, W)`` in [-1, 1] or ``(T, H, W, 3)`` uint8, enlarged ``scale`` times."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = video if isinstance(video, np.ndarray) else to_uint8_frames(video)
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    suffix = path.suffix.lower()
    if suffix == ".gif":
        imgs = [Image.fromarray(f) for f in frames]
        imgs[0].save(path, save_all=True, append_images=imgs[1:], duration=round(1000 / fps), loop=0)
        return path
    if suffix not in (".mp4", ".avi", ".mkv", ".mov"):
        raise ValueError(f"unsupported video suffix {suffix!r}: use .mp4, .avi, .mkv, .mov or .gif")
    t, h, w, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    with av.open(str(path), mode="w") as container:
        codec = "libx264" if suffix in (".mp4", ".mkv", ".mov") else "mpeg4"
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = w + w % 2, h + h % 2, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "18", "preset": "medium"}
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")))
        container.mux(stream.encode())
    return path


def temporal_consistency_figure(original: torch.Tensor, reconstruction: torch.Tensor, path: str | Path,
                                title: str = "") -> Path:
    """Figure with per-frame PSNR, frame-to-frame motion of original and reconstruction with the added flicker,
    and x-t slices (the middle row of every frame stacked over time) of both clips."""
    t = min(original.shape[1], reconstruction.shape[1])
    p = per_frame_psnr(original, reconstruction).numpy()
    tc = temporal_consistency(original, reconstruction)
    fig, axes = new_figure(14, 3.2, ncols=4, gridspec_kw={"width_ratios": [1.2, 1.2, 1, 1]})
    axes[0].plot(np.arange(t), p, "o-")
    axes[0].set(xlabel="frame", ylabel="PSNR (dB)", title=f"per-frame PSNR (mean {p.mean():.2f})")
    k = np.arange(1, t)
    axes[1].plot(k, tc["motion_original"], "o-", label="|x_t - x_t-1| original")
    axes[1].plot(k, tc["motion_reconstruction"], "s--", label="reconstruction")
    axes[1].plot(k, tc["flicker"], "^:", label="flicker (added change)")
    axes[1].set(xlabel="frame t", ylabel="mean abs change", title="temporal consistency")
    axes[1].legend(fontsize=7)
    for ax, clip, name in ((axes[2], original, "original"), (axes[3], reconstruction, "reconstruction")):
        xt = to_uint8_frames(clip[:, :t].clamp(-1, 1))[:, clip.shape[2] // 2]
        ax.imshow(xt, aspect="auto", interpolation="nearest")
        ax.set(xlabel="x", ylabel="frame", title=f"x-t slice, {name}")
    fig.suptitle(title)
    return save_figure(fig, path)


def save_video_reconstruction(
    original: torch.Tensor, reconstruction: torch.Tensor, directory: str | Path, stem: str, fps: float = 8.0,
    scale: int = 1, formats: tuple[str, ...] = ("mp4", "gif"),
) -> dict:
    """Write ``STEM_compare.{mp4,gif}`` (original | reconstruction), ``STEM_frames.png`` and
    ``STEM_temporal.png`` under ``directory``; return the paths and the per-frame PSNR / consistency numbers."""
    directory, t = Path(directory), min(original.shape[1], reconstruction.shape[1])
    a, b = original[:, :t].cpu(), reconstruction[:, :t].clamp(-1, 1).cpu()
    both = torch.cat([a, torch.ones(*a.shape[:3], 2), b], -1)  # original | 2 white columns | reconstruction
    files = {fmt: str(write_video(both, directory / f"{stem}_compare.{fmt}", fps, scale)) for fmt in formats}
    idx = torch.linspace(0, t - 1, min(t, 16)).round().long()  # originals over reconstructions with PSNR
    files["frames"] = str(save_comparison(a[:, idx].transpose(0, 1), b[:, idx].transpose(0, 1),
                                          directory / f"{stem}_frames.png", len(idx), scale, captions=True))
    temporal = temporal_consistency_figure(original, reconstruction, directory / f"{stem}_temporal.png", stem)
    files["temporal"] = str(temporal)
    p = per_frame_psnr(original, reconstruction)
    flicker = temporal_consistency(original, reconstruction)["flicker"]
    return {"files": files, "psnr": float(p.mean()), "psnr_per_frame": [round(float(v), 3) for v in p],
            "flicker": float(flicker.mean()) if len(flicker) else 0.0}


@torch.no_grad()
def reconstruct_video_file(
    model: torch.nn.Module, path: str | Path, output_dir: str | Path, resolution: int | None = None,
    max_frames: int = 33, frame_stride: int = 1, device: str = "cpu", formats: tuple[str, ...] = ("mp4", "gif"),
    scale: int | None = None,
) -> dict:
    """Reconstruct the first ``max_frames`` frames (every ``frame_stride``-th) of a video file, resized and
    centre-cropped to ``resolution`` (default: the model's), with an image model (frame by frame) or a
    :class:`~vqgan.models.VideoVQModel`; writes :func:`save_video_reconstruction`'s outputs."""
    path, cfg = Path(path), model.config
    try:
        src_fps, n = video_info(path)
    except Exception as e:  # noqa: BLE001 - PyAV raises many error types for broken files
        raise VideoDecodeError(f"{path}: {type(e).__name__}: {e}") from None
    if isinstance(model, VideoVQModel):  # use a whole number of temporal groups
        max_frames = 1 + (max_frames - 1) // model.time_factor * model.time_factor
    count = min(max_frames, max(1, (n - 1) // frame_stride + 1) if n else max_frames)
    arr, _ = decode_frames(path, [k * frame_stride for k in range(count)])
    clip = prepare_clip(arr, resolution or cfg.resolution, None, cfg.in_channels, random_crop=False, flip=False)
    rec, _ = reconstruct_video(model.to(device), clip.to(device))
    clip = clip[:, : rec.shape[1]]
    scale = scale or max(1, 96 // clip.shape[-1])
    out = save_video_reconstruction(clip, rec.cpu(), output_dir, path.stem, src_fps / frame_stride, scale,
                                    formats)
    return {**out, "file": str(path), "frames": int(rec.shape[1])}


def _label(text: str, width: int, height: int = 12) -> torch.Tensor:
    """A white ``(3, height, width)`` strip in [0, 1] with ``text`` in black, vertically centred."""
    img = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(img).text((1, (height - 12) // 2), text, fill=(0, 0, 0))
    return pil_to_tensor(img).float() / 255


def save_clip_grid(
    clips: torch.Tensor, directory: str | Path, stem: str, captions: list[str] | None = None, ncol: int = 4,
    fps: float = 4.0, scale: int | None = None, formats: tuple[str, ...] = ("mp4", "gif"),
) -> dict[str, str]:
    """Write clips ``(B, C, T, H, W)`` in [-1, 1] tiled ``ncol`` per row under their captions (e.g. classes)
    as ``DIRECTORY/STEM.{mp4,gif}``, and ``STEM_frames.png`` (a row of frames per clip); returns the paths."""
    directory, scale = Path(directory), scale or max(1, 64 // clips.shape[-1])
    x = to_unit(clips.detach().cpu()).expand(-1, 3, -1, -1, -1).repeat_interleave(scale, -1)
    x = x.repeat_interleave(scale, -2)
    b, _, t, _, w = x.shape
    tiles = x
    if captions:
        labels = [str(c)[: max(1, w // 6)] for c in captions] + [""] * b
        strips = torch.stack([_label(c, w) for c in labels[:b]])
        tiles = torch.cat([strips[:, :, None].expand(-1, -1, t, -1, -1), x], -2)
    grid = torch.stack([make_grid(tiles[:, :, i], nrow=max(1, min(ncol, b)), padding=2, pad_value=1.0)
                        for i in range(t)])
    grid = to_uint8(grid).permute(0, 2, 3, 1).numpy()
    files = {fmt: str(write_video(grid, directory / f"{stem}.{fmt}", fps)) for fmt in formats}
    rows = make_grid(x.transpose(1, 2).flatten(0, 1), nrow=t, padding=2, pad_value=1.0)
    if captions:  # a caption column on the left of every row
        h, width = rows.shape[1] // b, 8 * max(len(str(c)) for c in captions) + 4
        labels = [_label(str(c), width, h) for c in captions[:b]]
        column = torch.cat([*labels, torch.ones(3, rows.shape[1] - h * len(labels), width)], 1)
        rows = torch.cat([column, rows], -1)
    files["frames"] = str(save_picture(rows, directory / f"{stem}_frames.png"))
    return files
