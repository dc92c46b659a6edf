"""Clips from a prior over a video tokenizer's ``(t, h, w)`` token grids, with torch only (``vqgan sample``):
class-conditional MP4 and GIF grids, and frame prediction scored against the true continuation."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from vqgan.metrics.video import frame_prediction_scores, motion_profile
from vqgan.viz.video import save_clip_grid, temporal_consistency, write_video

log = logging.getLogger(__name__)


def clip_frames(tokenizer: torch.nn.Module, latent_frames: int) -> int:
    """Video frames decoded from ``t = latent_frames``: ``1 + (t - 1) s`` for a causal video tokenizer of time
    factor ``s``, ``t`` for a frame-wise (image) tokenizer."""
    s = getattr(tokenizer, "time_factor", 1)
    return 1 + (latent_frames - 1) * s if s > 1 else latent_frames


def prefix_latent_frames(tokenizer: torch.nn.Module, prefix_frames: int) -> int:
    """Latent frames that encode the first ``k = prefix_frames`` video frames alone: with a causal video
    tokenizer of time factor ``s``, ``1 + (k - 1) / s``, and ``k`` must be ``1 + j s`` (a latent frame mixes
    ``s`` frames: part of one would leak the future); with a frame-wise tokenizer, ``k``."""
    s = getattr(tokenizer, "time_factor", 1)
    if prefix_frames < 1:
        raise ValueError(f"--prefix-frames {prefix_frames}: give at least one frame")
    if s > 1 and (prefix_frames - 1) % s:
        raise ValueError(
            f"--prefix-frames {prefix_frames}: this tokenizer codes {s} frames per latent frame after the "
            f"first, so the given frames must number 1 + j * {s} (e.g. {1 + s} or {1 + 2 * s})"
        )
    return 1 + (prefix_frames - 1) // s if s > 1 else prefix_frames


def load_clips(
    path: str | Path, frames: int, resolution: int, channels: int, limit: int | None = None
) -> tuple[torch.Tensor, list[str]]:
    """The first ``frames`` frames of a video file or of every video under a folder (sorted), resized and
    centre-cropped: ``(N, C, T, H, W)`` in [-1, 1] and the file names. Unreadable or too short videos are
    skipped with a warning; none left is an error naming the input."""
    from vqgan.data.video import VideoDecodeError, decode_frames, list_videos, prepare_clip

    src = Path(path)
    files = [src] if src.is_file() else [r.path for r in list_videos(src)]
    clips, names = [], []
    for f in files:
        try:
            arr, _ = decode_frames(f)
        except VideoDecodeError as e:
            log.warning("skipping %s", e)
            continue
        if len(arr) < frames:
            log.warning("skipping %s: %d frames, %d needed", f, len(arr), frames)
            continue
        clips.append(prepare_clip(arr[:frames], resolution, None, channels, random_crop=False, flip=False))
        names.append(f.name)
        if limit is not None and len(clips) >= limit:
            break
    if not clips:
        raise ValueError(f"no readable clip of at least {frames} frames in {path}")
    return torch.stack(clips), names


@torch.no_grad()
def encode_clips(tokenizer: torch.nn.Module, clips: torch.Tensor) -> torch.Tensor:
    """Token grids ``(N, t, h, w)`` of clips ``(N, C, T, H, W)`` (frame by frame for an image tokenizer)."""
    from vqgan.data.tokens import _encode

    return _encode(tokenizer, clips.to(next(tokenizer.parameters()).device)).indices.cpu()


@torch.no_grad()
def generate_clips(
    model: torch.nn.Module, tokenizer: torch.nn.Module, output: str | Path,
    labels: torch.Tensor | None = None, num: int = 8, class_names: list[str] | None = None,
    prefix_frames: int = 0, inputs: str | Path | torch.Tensor | None = None, cfg_scale: float = 1.0,
    temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None, steps: int = 8,
    use_cache: bool = True, seed: int = 0, ncol: int = 4, fps: float = 4.0, device: str = "cpu",
) -> dict[str, Any]:
    """Sample clips from a clip prior and decode them with its tokenizer: ``OUTPUT/tokens.safetensors`` (token
    grids and labels), ``OUTPUT/clips.safetensors`` (decoded clips) and

    - without ``prefix_frames``: ``num`` clips (classes from ``labels``) as ``grid.{mp4,gif}`` and
      ``grid_frames.png`` with class captions;
    - with ``prefix_frames = k`` and ``inputs`` (a video file or folder, or clips ``(N, C, T, H, W)`` in
      [-1, 1]): frame prediction, every input clip cut to the prior's length, the codes of its first ``k``
      frames kept and the rest generated;
      ``prediction.{mp4,gif}`` (rows of truth | prediction) and the scores of
      :func:`~vqgan.metrics.video.frame_prediction_scores`.
    """
    from safetensors.torch import save_file

    from vqgan.inference import decode_tokens, label_tensor

    cfg, out = model.config, Path(output)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer.to(device).eval()
    names = list(class_names or [])
    frames = clip_frames(tokenizer, cfg.token_frames)
    kw: dict[str, Any] = dict(temperature=temperature, top_k=top_k, top_p=top_p, cfg_scale=cfg_scale,
                              generator=torch.Generator(device=device).manual_seed(seed))
    kw.update({"steps": steps} if cfg.kind == "maskgit" else {"use_cache": use_cache})
    result: dict[str, Any] = {"output": str(out), "kind": cfg.kind, "frames": frames}
    truth = None
    if prefix_frames:
        if inputs is None:
            raise ValueError("--prefix-frames needs --input: a video file or folder whose first frames are "
                             "given")
        k = prefix_latent_frames(tokenizer, prefix_frames)
        if k >= cfg.token_frames:
            raise ValueError(f"--prefix-frames {prefix_frames} covers all {cfg.token_frames} latent frames "
                             "of the prior")
        if isinstance(inputs, torch.Tensor):
            truth = inputs[:num, :, :frames].float().cpu()
            files = [f"clip {i}" for i in range(len(truth))]
            if truth.shape[2] != frames:
                raise ValueError(f"the given clips have {truth.shape[2]} frames; the prior models {frames}")
        else:
            tcfg = tokenizer.config
            truth, files = load_clips(inputs, frames, tcfg.resolution, tcfg.in_channels, limit=num)
        codes = encode_clips(tokenizer, truth)
        if tuple(codes.shape[1:]) != tuple(cfg.token_shape):
            raise ValueError(f"the tokenizer codes these clips as {tuple(codes.shape[1:])}; the prior models "
                             f"{cfg.token_shape}")
        labels = None if labels is None else labels[: len(truth)]
        kw["prefix"] = codes[:, :k].to(device)
        result.update(prefix_frames=prefix_frames, prefix_latent_frames=k, inputs=files)
    else:
        kw["num"] = num
    start = time.perf_counter()
    tokens = model.generate(labels=None if labels is None else labels.to(device), **kw)
    result["sample_seconds"] = round(time.perf_counter() - start, 3)
    clips = decode_tokens(tokenizer, tokens)
    lab = label_tensor(labels, tokens.shape[0])
    captions = [names[i] if 0 <= i < len(names) else (str(i) if i >= 0 else "any") for i in lab.tolist()]
    save_file({"tokens": tokens.cpu().contiguous(), "labels": lab.contiguous()},
              str(out / "tokens.safetensors"))
    save_file({"clips": clips.contiguous()}, str(out / "clips.safetensors"))
    result["num"] = int(tokens.shape[0])
    result["motion_per_transition"] = [round(float(v), 4) for v in motion_profile(clips)]
    if truth is None:
        result["files"] = save_clip_grid(clips, out, "grid", captions, ncol, fps)
        return result
    scores = frame_prediction_scores(clips, truth, context_frames=prefix_frames)
    flicker = torch.stack([temporal_consistency(t, c)["flicker"] for t, c in zip(truth, clips, strict=True)])
    result.update(scores, flicker_per_transition=[round(float(v), 4) for v in flicker.mean(0)])
    # Truth (left) and prediction (right) of every clip side by side; captions say which frames were given.
    pairs = torch.stack([truth, clips], 1).flatten(0, 1)
    pair_captions = [c for f in result["inputs"] for c in (f"true {f}", f"pred {prefix_frames}+")]
    result["files"] = save_clip_grid(pairs, out, "prediction", pair_captions, 2, fps)
    for i, (t, c) in enumerate(zip(truth, clips, strict=True)):  # one comparison clip per input, for viewing
        both = torch.cat([t, torch.ones_like(t[..., :2]), c], dim=-1)
        write_video(both, out / "clips" / f"prediction_{i:03d}.gif", fps, scale=max(1, 64 // t.shape[-1]))
    return result
