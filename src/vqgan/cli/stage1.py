"""Stage-1 commands: ``fit``, ``validate``, ``reconstruct``, ``reconstruct-video``, ``presets``; and
:func:`eval_data`, the ``--data`` of every command that reads a tokenizer's data."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from vqgan.cli import command, report_skipped, run_training
from vqgan.config import DataConfig, ExperimentConfig
from vqgan.registry import PRESETS

log = logging.getLogger("vqgan.cli")


@command("fit", presets=PRESETS)
def fit(
    config: ExperimentConfig, run_dir: str | None = None, run_name: str | None = None,
    max_steps: int | None = None, resume: str | None = None, debug: bool = False,
) -> int:
    """Train a stage-1 tokenizer (VQ-VAE / VQGAN) from a preset or a YAML config, with dotted overrides.

    Args:
        run_dir: folder for the resolved config, checkpoints, samples, logs and metrics.
        run_name: name of the run (W&B); without --run-dir it trains in runs/NAME.
        max_steps: train this many steps (sets train.max_steps and clears train.max_epochs).
        resume: 'last' (the newest good checkpoint of the run) or a checkpoint path.
        debug: a handful of steps, 2 validation batches, no online logging.
    """
    from vqgan.train import fit as train

    config.train.debug = config.train.debug or debug
    return run_training(lambda: train(config, run_dir, resume=resume, run_name=run_name), config, max_steps,
                        ("psnr", "ssim", "codebook_usage", "perplexity", "steps", "train_seconds"))


def eval_data(
    data: DataConfig | dict[str, Any] | str | None, checkpoint_data: DataConfig | None, model_config
) -> DataConfig:
    """The data a command reads with a tokenizer (``model_config``), from its ``--data``: ``None``, the
    ``checkpoint_data`` (a pretrained folder has none: the built-in photos at the model's resolution); a
    folder, every image in it, centre-cropped to the model's resolution; a YAML file or a mapping of
    ``DataConfig`` keys, those keys over the checkpoint's data; a :class:`DataConfig`, itself."""
    import yaml

    from vqgan.config import ConfigError, replace_keys

    if isinstance(data, DataConfig):
        return data
    base = checkpoint_data or DataConfig(resolution=model_config.resolution, channels=model_config.in_channels)
    if data is None:
        return base
    if isinstance(data, str):
        path = Path(data)
        if path.is_dir():
            return replace(
                base, kind="folder", root=str(path), val_root=str(path), crop="center", flip=False, resize=None,
                resolution=model_config.resolution, channels=model_config.in_channels, val_size=2**31 - 1,
            )
        if not path.is_file():
            raise FileNotFoundError(f"--data {data}: no such folder of images or YAML file")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"--data {path}: expected a mapping of data options, got {type(data).__name__}")
    return replace_keys(base, data.as_dict() if hasattr(data, "as_dict") else dict(data))


def eval_loaders(model, data: DataConfig | str | None, checkpoint_data: DataConfig | None = None,
                 seed: int = 0) -> tuple:
    """The training and validation loaders of :func:`eval_data` for the tokenizer ``model``."""
    from vqgan.train.fit import build_loaders

    cfg = ExperimentConfig(model=model.config, data=eval_data(data, checkpoint_data, model.config))
    cfg.train.seed = seed
    return build_loaders(cfg)


@command("validate")
def validate(ckpt: str, data: DataConfig | str | None = None, device: str = "auto") -> int:
    """Print PSNR, SSIM, codebook usage and perplexity of a checkpoint as one JSON object."""
    from vqgan.metrics.evaluate import reconstruction_metrics
    from vqgan.models.io import load_model

    model, exp = load_model(ckpt)
    _, val_loader = eval_loaders(model, data, exp.data if exp else None)
    print(json.dumps(reconstruction_metrics(model, val_loader, device)))
    return 0


@command("reconstruct")
def reconstruct(
    ckpt: str, input: str, output: str, resolution: int | None = None, full_size: bool = False, tile: bool = True,
    device: str = "auto",
) -> int:
    """Reconstruct an image, a folder of images, or a video file (MP4/GIF side by side, per-frame PSNR).

    Args:
        input: an image file, a folder of images, or a video file.
        resolution: resize and centre-crop side (default: the model's).
        full_size: keep whole images (cropped to a multiple of the downsampling) instead of the model's crop.
        tile: with --full-size, reconstruct a whole image as blended windows of the model's training resolution
            (false: in one pass, for a model trained on images of that size).
    """
    from vqgan.data.video import VIDEO_EXTENSIONS
    from vqgan.inference import reconstruct_files
    from vqgan.models.io import load_model

    model, _ = load_model(ckpt)
    if Path(input).is_file() and Path(input).suffix.lower() in VIDEO_EXTENSIONS:  # a video: MP4/GIF out
        from vqgan.data.video import VideoDecodeError
        from vqgan.viz.video import reconstruct_video_file

        try:
            r = reconstruct_video_file(model, input, output, resolution, device=device)
        except VideoDecodeError as e:
            raise ValueError(f"cannot read video {e}") from None
        print(f"{r['file']}: {r['frames']} frames, PSNR {r['psnr']:.2f} dB -> {r['files']['mp4']}")
        return 0
    out = reconstruct_files(model, input, output, resolution, full_size, device, tile)
    for r in out.records:
        print(f"{r['file']}: PSNR {r['psnr']:.2f} dB")
    return report_skipped("reconstruct", len(out.skipped), len(out.records) + len(out.skipped))


@command("reconstruct-video")
def reconstruct_video(
    ckpt: str, input: str, output: str, resolution: int | None = None, max_frames: int = 33,
    frame_stride: int = 1, formats: list[str] | None = None, device: str = "auto",
) -> int:
    """Reconstruct a video file (or every video under a folder): MP4/GIF side by side, frames, temporal figure.

    Args:
        input: a video file or a folder of videos.
        resolution: resize and centre-crop side (default: the model's).
        max_frames: frames to reconstruct from the start of each video.
        frame_stride: keep every N-th frame.
        formats: video formats to write: mp4, gif, avi (default: mp4 and gif).
    """
    from vqgan.data.video import VideoDecodeError, list_videos
    from vqgan.models.io import load_model
    from vqgan.viz.video import reconstruct_video_file

    model, _ = load_model(ckpt)
    src = Path(input)
    files = [src] if src.is_file() else [r.path for r in list_videos(src)]
    skipped = 0
    for f in files:
        try:
            r = reconstruct_video_file(model, f, output, resolution, max_frames, frame_stride, device,
                                       tuple(formats or ("mp4", "gif")))
        except VideoDecodeError as e:
            if src.is_file():  # the one file asked for: a one-line error
                raise ValueError(f"cannot read video {e}") from None
            # A broken video in a folder is skipped and counted, as training does; the others are written.
            skipped += 1
            log.warning("skipping unreadable video %s", e)
            continue
        print(json.dumps({k: r[k] for k in ("file", "frames", "psnr", "flicker", "files")}))
    return report_skipped("reconstruct-video", skipped, len(files))


@command("presets")
def presets(show: str | None = None, write_configs: str | None = None) -> int:
    """List the named presets (tokenizers and priors), print one as YAML, or write the files of configs/.

    Args:
        show: print the YAML of this preset (what --preset NAME sets).
        write_configs: write every configs/ file from its preset into this folder (the files are generated, never
            edited by hand).
    """
    from vqgan.models.prior.config import PRIOR_PRESETS
    from vqgan.registry import preset_yaml, write_config_files

    if write_configs:
        for path in write_config_files(write_configs):
            print(f"written {path}")
        return 0
    if show:
        print(preset_yaml(show, "prior" if show in PRIOR_PRESETS else "stage1"), end="")
        return 0
    for title, registry in (("tokenizers (vqgan fit --preset NAME)", PRESETS),
                            ("priors (vqgan fit-prior --preset NAME)", PRIOR_PRESETS)):
        print(f"{title}:")
        for name, desc in registry.describe().items():
            print(f"  {name:28s} {desc}")
    return 0
