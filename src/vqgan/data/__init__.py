"""Datasets. Every dataset yields dicts: ``image`` (``(C, H, W)`` or ``(C, T, H, W)`` in [-1, 1]) and optionally
``mask`` and ``label``. :func:`build_datasets` maps a :class:`DataConfig` to a (train, validation) pair through a
small registry of data kinds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import Dataset

from vqgan.config import DataConfig
from vqgan.data.builtin import BuiltinPhotos, load_photo
from vqgan.data.images import EmptyDatasetError, ImageFolder, collate_skip, list_images
from vqgan.data.synthetic import MovingDigits, SmokePlume, SmokeVideo
from vqgan.data.video import (
    Exploded,
    VideoChunks,
    VideoClips,
    VideoRecord,
    list_videos,
    pieces_per_clip,
    ucf101_records,
)
from vqgan.registry import Registry

#: ``DataConfig.kind`` -> builder ``(config, seed) -> (train, val)``.
DATA_KINDS: Registry[Callable[[DataConfig, int], tuple[Dataset, Dataset]]] = Registry("data kind")


def register_data(kind: str, description: str = "") -> Callable:
    """Register ``builder(config, seed) -> (train, val)`` for ``DataConfig.kind == kind``."""
    return DATA_KINDS.register(kind, description)


@register_data("builtin")
def _builtin(cfg: DataConfig, seed: int) -> tuple[Dataset, Dataset]:
    common = dict(resolution=cfg.resolution, scale=cfg.builtin_scale, channels=cfg.channels, seed=seed)
    jitter = dict(flip=cfg.flip, hue=cfg.builtin_hue, saturation=cfg.builtin_saturation)
    train = BuiltinPhotos("train", length=cfg.builtin_train_crops, **jitter, **common)
    return train, BuiltinPhotos("val", length=cfg.val_size, **common)


@register_data("folder")
def _folder(cfg: DataConfig, seed: int) -> tuple[Dataset, Dataset]:
    if cfg.root is None:
        raise EmptyDatasetError("data.kind=folder needs data.root (a folder of images)")
    files = list_images(cfg.root)
    if cfg.val_root is not None:
        train_files, val_files = files, list_images(cfg.val_root)
    else:
        # Hold out a deterministic, evenly spread subset for validation.
        n_val = min(cfg.val_size, max(1, len(files) // 10)) if len(files) > 1 else 0
        step = max(1, len(files) // max(n_val, 1))
        val_idx = set(range(0, len(files), step)[:n_val])
        train_files = [f for i, f in enumerate(files) if i not in val_idx] or files
        val_files = [f for i, f in enumerate(files) if i in val_idx] or files
    common = dict(resolution=cfg.resolution, resize=cfg.resize, channels=cfg.channels)
    train = ImageFolder(train_files, random_crop=cfg.crop == "random", flip=cfg.flip, seed=seed, **common)
    return train, ImageFolder(val_files[: cfg.val_size], **common)


def _synthetic(cls: type, cfg: DataConfig, seed: int, per_item: int = 1, **kwargs) -> tuple[Dataset, Dataset]:
    """``builtin_train_crops`` / ``per_item`` training and ``val_size`` / ``per_item`` validation items, drawn
    from a disjoint seed range so that validation plumes/digits never occur in training."""
    kwargs.update(resolution=cfg.resolution, channels=cfg.channels)
    sizes = (cfg.builtin_train_crops, cfg.val_size)
    n_train, n_val = sizes if per_item == 1 else (max(1, n // per_item) for n in sizes)
    return cls(n_train, seed=seed, **kwargs), cls(n_val, seed=seed + 1_000_003, **kwargs)


@register_data("smoke")
def _smoke(cfg: DataConfig, seed: int) -> tuple[Dataset, Dataset]:
    return _synthetic(SmokePlume, cfg, seed)


@register_data("smoke_video")
def _smoke_video(cfg: DataConfig, seed: int) -> tuple[Dataset, Dataset]:
    return _synthetic(SmokeVideo, cfg, seed, frames=cfg.frames, frame_stride=cfg.frame_stride)


@register_data("moving_digits")
def _moving_digits(cfg: DataConfig, seed: int) -> tuple[Dataset, Dataset]:
    options = dict(frames=cfg.frames, frames_as_images=cfg.frames_as_images, num_digits=cfg.num_digits)
    # With frames_as_images the lengths count clips; every clip gives ``frames`` images.
    return _synthetic(MovingDigits, cfg, seed, cfg.frames if cfg.frames_as_images else 1, **options)


def _video_datasets(
    cfg: DataConfig, seed: int, train_records: list[VideoRecord], val_records: list[VideoRecord],
    classes: list[str] | None = None,
) -> tuple[Dataset, Dataset]:
    """Clip datasets (labelled by ``classes``), then seed 000's frames-as-images / patches / chunks options on top."""
    if cfg.test_chunk is not None:
        train_records, val_records = hold_out_chunk(train_records, cfg.videos_per_chunk or 1, cfg.test_chunk)
    common = dict(resolution=cfg.resolution, frames=cfg.frames, frame_stride=cfg.frame_stride, fps=cfg.fps,
                  resize=cfg.resize, channels=cfg.channels, classes=classes)
    per_clip = pieces_per_clip(cfg.frames, cfg.frames_as_images, cfg.resolution, cfg.patch_size)
    # Validation: deterministic centred clips of at most val_size items.
    val_records = val_records[: max(1, cfg.val_size // per_clip)]
    train = VideoClips(train_records, clip_offset=cfg.clip_offset, random_crop=cfg.crop == "random", flip=cfg.flip, **common)
    val = VideoClips(val_records, clip_offset="uniform", **common)
    split = cfg.frames_as_images or cfg.patch_size is not None
    if cfg.videos_per_chunk:
        train = VideoChunks(train, cfg.videos_per_chunk, cfg.epochs_per_chunk, cfg.frames_as_images, cfg.patch_size, seed,
                            gan_epochs_per_chunk=cfg.gan_epochs_per_chunk)
    elif split:
        train = Exploded(train, per_clip, cfg.frames_as_images, cfg.patch_size)
    if split:
        val = Exploded(val, per_clip, cfg.frames_as_images, cfg.patch_size)
    return train, val


def hold_out_chunk(records: list[VideoRecord], per_chunk: int, k: int) -> tuple[list[VideoRecord], list[VideoRecord]]:
    """Seed 000's ``--test_batch k``: ``(others, chunk k)`` of ``records`` cut into chunks of ``per_chunk`` in
    a shuffled order that is the same in every run (they hold out the same videos), in the records' order."""
    n_chunks = -(-len(records) // per_chunk)
    if not 0 <= k < n_chunks:
        raise EmptyDatasetError(
            f"data.test_chunk={k}: {len(records)} training videos make {n_chunks} chunks of "
            f"data.videos_per_chunk={per_chunk} (indices 0 to {n_chunks - 1})"
        )
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(0)).tolist()
    held = set(order[k * per_chunk : (k + 1) * per_chunk])
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


@register_data("ucf101")
def _ucf101(cfg: DataConfig, seed: int) -> tuple[Dataset, Dataset]:
    if cfg.root is None:
        raise EmptyDatasetError("data.kind=ucf101 needs data.root (the UCF-101 folder of class folders)")
    # Labels are the 101 classes of the dataset's own classInd.txt (0-based), names kept for the token folders.
    train, names = ucf101_records(cfg.root, cfg.split, train=True, annotations=cfg.annotations)
    test, _ = ucf101_records(cfg.root, cfg.split, train=False, annotations=cfg.annotations)
    # Spread the validation videos over the classes (the test list is sorted by class).
    step = max(1, len(test) // max(1, cfg.val_size))
    return _video_datasets(cfg, seed, train, test[::step], names)


@register_data("video_folder")
def _video_folder(cfg: DataConfig, seed: int) -> tuple[Dataset, Dataset]:
    if cfg.root is None:
        raise EmptyDatasetError("data.kind=video_folder needs data.root (a folder of videos)")
    records = list_videos(cfg.root)
    # Labels index the sorted first-level sub-folders (list_videos): the same order gives their names.
    root = Path(cfg.root).expanduser()
    names = sorted({r.path.relative_to(root).parts[0] for r in records if r.label >= 0})
    if cfg.val_root is not None:
        return _video_datasets(cfg, seed, records, list_videos(cfg.val_root), names)
    # Hold out every 10th video (at least one, unless there is only one) for validation.
    val = records[::10] if len(records) > 1 else records
    train = [r for r in records if r not in val] or records
    return _video_datasets(cfg, seed, train, val, names)


def build_datasets(cfg: DataConfig, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Training and validation datasets for ``cfg``; raises :class:`EmptyDatasetError` when there is no data."""
    train, val = DATA_KINDS[cfg.kind](cfg, seed)
    for name, ds in (("training", train), ("validation", val)):
        if len(ds) == 0:
            raise EmptyDatasetError(f"the {name} set of data.kind={cfg.kind} (root={cfg.root}) is empty")
    return train, val


def pin_memory(device: str | torch.device) -> bool:
    """Whether a loader feeding ``device`` (or a Lightning accelerator name) should return page-locked
    batches: only for CUDA, where they make ``non_blocking`` copies asynchronous (elsewhere they cost)."""
    kind = device.type if isinstance(device, torch.device) else str(device).split(":")[0]
    return kind in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def available_data() -> list[str]:
    return DATA_KINDS.names()


__all__ = [
    "BuiltinPhotos", "DATA_KINDS", "EmptyDatasetError", "ImageFolder", "MovingDigits", "SmokePlume",
    "VideoChunks", "VideoClips", "SmokeVideo", "available_data", "build_datasets", "collate_skip",
    "list_images", "load_photo", "pin_memory", "register_data",
]
