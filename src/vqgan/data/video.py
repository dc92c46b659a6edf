"""Video datasets, decoded with PyAV: any folder of videos, and UCF101 (Soomro et al. 2012) as it ships:
``UCF-101/<Class>/v_*.avi`` plus ``ucfTrainTestlist/`` with ``classInd.txt`` ("1 ApplyEyeMakeup"),
``trainlist0N.txt`` ("Class/v_....avi 1") and ``testlist0N.txt`` ("Class/v_....avi") for the three splits.
A video that can't be decoded comes back as ``None`` with a warning; ``collate_skip`` drops and counts it."""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from vqgan.data.images import EmptyDatasetError, find_files

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = {".avi", ".mp4", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v", ".gif"}


class VideoDecodeError(RuntimeError):
    """A video that can't be opened or holds too few decodable frames."""


@dataclass(frozen=True)
class VideoRecord:
    """One video file and its class label (``-1`` when unlabelled)."""

    path: Path
    label: int = -1


def list_videos(root: str | Path) -> list[VideoRecord]:
    """Videos under ``root`` (recursive, sorted). The label is the index of the first-level sub-folder (sorted),
    or ``-1`` for videos directly in ``root``."""
    root = Path(root).expanduser()
    files = find_files(root, VIDEO_EXTENSIONS, "video")
    classes = sorted({p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) > 1})
    index = {c: i for i, c in enumerate(classes)}
    return [VideoRecord(p, index.get(p.relative_to(root).parts[0], -1) if p.parent != root else -1) for p in files]


def ucf101_records(
    root: str | Path, split: int = 1, train: bool = True, annotations: str | Path | None = None
) -> tuple[list[VideoRecord], list[str]]:
    """The videos of UCF101 split 1, 2 or 3 (training or test list) under the ``UCF-101`` folder ``root``, and
    the class names; videos listed but missing on disk (partial downloads) are left out with one warning."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise EmptyDatasetError(f"UCF101 folder {root} does not exist")
    places = [root, root / "ucfTrainTestlist", root.parent / "ucfTrainTestlist"]
    places = [Path(annotations)] if annotations else places
    if (ann := next((p for p in places if (p / "classInd.txt").is_file()), None)) is None:
        raise EmptyDatasetError(
            f"no classInd.txt found in {' or '.join(map(str, places))}: "
            "unpack UCF101TrainTestSplits-RecognitionTask.zip next to the videos"
        )
    rows = [line.split() for line in (ann / "classInd.txt").read_text().splitlines() if line.strip()]
    classes = {name: int(num) - 1 for num, name in rows}  # classInd is 1-based; labels are 0-based
    lst = ann / f"{'train' if train else 'test'}list{split:02d}.txt"
    if not lst.is_file():
        raise EmptyDatasetError(f"split file {lst} not found (UCF101 has splits 1, 2 and 3)")
    listed = [line.split()[0].replace("\\", "/") for line in lst.read_text().splitlines() if line.strip()]
    for rel in listed:
        if rel.split("/")[0] not in classes:
            raise EmptyDatasetError(f"{lst}: class {rel.split('/')[0]!r} of {rel} is not in classInd.txt")
    records = [VideoRecord(root / r, classes[r.split("/")[0]]) for r in listed if (root / r).is_file()]
    if len(records) < len(listed):
        log.warning("%d videos listed in %s are missing under %s", len(listed) - len(records), lst.name, root)
    return records, sorted(classes, key=classes.get)


def video_info(path: str | Path) -> tuple[float, int]:
    """``(fps, number of frames)`` from the container header (the count may be 0 when the header lacks it)."""
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return float(s.average_rate or s.guessed_rate or 25), int(s.frames or 0)


def decode_frames(path: str | Path, indices: list[int] | None = None) -> tuple[np.ndarray, float]:
    """Decode frames (``(T, H, W, 3)`` uint8 RGB), all or ``indices`` (in decode order, stopping after the
    last one needed), and the video's frame rate. Raises :class:`VideoDecodeError`."""
    import av

    wanted, stop = (None, None) if indices is None else (set(indices), max(indices))
    frames: dict[int, np.ndarray] = {}
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise VideoDecodeError(f"{path}: no video stream")
            s = c.streams.video[0]
            s.thread_type = "AUTO"
            fps = float(s.average_rate or s.guessed_rate or 25)
            for i, frame in enumerate(c.decode(s)):
                if wanted is None or i in wanted:
                    frames[i] = frame.to_ndarray(format="rgb24")
                if stop is not None and i >= stop:
                    break
    except av.error.FFmpegError as e:  # unreadable, or a truncated stream: keep what was decoded
        if not frames:
            raise VideoDecodeError(f"{path}: {e}") from None
        log.warning("%s: decoding stopped early (%s); using the %d frames read", path, e, len(frames))
    if not frames:
        raise VideoDecodeError(f"{path}: no decodable frames")
    got = sorted(frames)
    if indices is None:
        return np.stack([frames[i] for i in got]), fps
    # A frame past the end of the stream (short or truncated video) repeats the last frame decoded before it.
    return np.stack([frames[max((k for k in got if k <= i), default=got[0])] for i in indices]), fps


def clip_indices(
    num_frames: int, src_fps: float, frames: int, stride: int, fps: float | None, offset: float
) -> list[int]:
    """Decode-order indices of one clip: ``frames`` samples ``stride`` target frames apart at ``fps``, starting at
    ``offset`` in [0, 1] of the free range (0: start, 0.5: centred, 1: end; past the end: the last frame)."""
    step = stride * (src_fps / fps if fps else 1.0)  # source frames between two clip frames
    start = offset * max(num_frames - 1 - step * (frames - 1), 0.0)
    return [int(round(start + k * step)) for k in range(frames)]


def prepare_clip(
    frames: np.ndarray, resolution: int, resize: int | None, channels: int, random_crop: bool, flip: bool,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``(T, H, W, 3)`` uint8 -> ``(C, T, resolution, resolution)`` in [-1, 1]: shorter side resized (antialiased
    bilinear), one crop and one flip for all frames so that motion is preserved."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # (T, 3, H, W)
    if channels == 1:  # ITU-R 601 luma, as PIL's "L" mode
        x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    target = max(resize or resolution, resolution)
    if (scale := target / min(x.shape[-2:])) != 1:
        size = [max(target, round(n * scale)) for n in x.shape[-2:]]
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    h, w = x.shape[-2:]
    if random_crop:
        top, left = (int(torch.randint(0, n - resolution + 1, (1,), generator=generator)) for n in (h, w))
    else:
        top, left = (h - resolution) // 2, (w - resolution) // 2
    x = x[..., top : top + resolution, left : left + resolution]
    if flip and torch.rand((), generator=generator) < 0.5:
        x = x.flip(-1)
    return (x.clamp(0, 255) / 127.5 - 1.0).permute(1, 0, 2, 3).contiguous()


@dataclass(eq=False)
class VideoClips(Dataset):
    """Clips of a list of videos as ``{"image": (C, T, H, W), "label": int}``, ``None`` for unreadable ones:
    ``frames`` frames ``frame_stride`` apart at ``fps`` (``None``: the file's own rate), from a random offset
    (``clip_offset="random"``) or ``clips_per_video`` evenly spread ones (``uniform``; 1: the centred clip),
    shorter side resized to ``resize`` (default ``resolution``). ``classes`` names the labels (token folders).
    """

    records: list[VideoRecord]
    resolution: int
    frames: int = 8
    frame_stride: int = 1
    fps: float | None = None
    clip_offset: str = "random"
    clips_per_video: int = 1
    resize: int | None = None
    channels: int = 3
    random_crop: bool = False
    flip: bool = False
    classes: list[str] | None = None

    def __post_init__(self):
        if self.clip_offset not in ("random", "uniform"):
            raise ValueError(f"clip_offset must be 'random' or 'uniform', not {self.clip_offset!r}")
        self.clips_per_video, self.classes = max(1, self.clips_per_video), list(self.classes or [])
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.records) * self.clips_per_video

    def _offset(self, k: int) -> float:
        if self.clip_offset == "random":
            return float(torch.rand(()))
        return 0.5 if self.clips_per_video == 1 else k / (self.clips_per_video - 1)

    def load(self, i: int) -> dict[str, torch.Tensor]:
        """Clip ``i``; raises :class:`VideoDecodeError` for an unreadable video."""
        rec = self.records[i // self.clips_per_video]
        try:
            src_fps, n = video_info(rec.path)
        except Exception as e:  # noqa: BLE001 - PyAV raises many error types for broken files
            raise VideoDecodeError(f"{rec.path}: {e}") from None
        every = None
        if n <= 0:  # header without a frame count: decode everything once
            every, src_fps = decode_frames(rec.path)
            n = len(every)
        offset = self._offset(i % self.clips_per_video)
        idx = clip_indices(n, src_fps, self.frames, self.frame_stride, self.fps, offset)
        arr = decode_frames(rec.path, idx)[0] if every is None else every[np.minimum(idx, n - 1)]
        clip = prepare_clip(arr, self.resolution, self.resize, self.channels, self.random_crop, self.flip)
        return {"image": clip, "label": torch.tensor(rec.label)}

    def __getitem__(self, i: int) -> dict[str, torch.Tensor] | None:
        try:
            return self.load(i)
        except VideoDecodeError as e:
            self.skipped += 1
            log.warning("skipping unreadable video (%d so far in this process): %s", self.skipped, e)
            return None


def explode(item: dict[str, torch.Tensor], frames_as_images: bool, patch_size: int | None) -> list[dict[str, torch.Tensor]]:
    """Split one clip item into frames (``(C, H, W)`` each) and/or ``patch_size`` tiles, row-major."""
    keys = [k for k in ("image", "mask") if k in item]
    extra = {k: v for k, v in item.items() if k not in keys}
    views = [item]
    if frames_as_images:
        views = [{k: item[k][:, f] for k in keys} for f in range(item["image"].shape[1])]
    h, w = item["image"].shape[-2:]
    ph, pw = (patch_size, patch_size) if patch_size else (h, w)
    return [
        {**{k: view[k][..., r : r + ph, c : c + pw].contiguous() for k in keys}, **extra}
        for view in views
        for r in range(0, h - ph + 1, ph)
        for c in range(0, w - pw + 1, pw)
    ]


class Exploded(Dataset):
    """Clips split into frames and/or tiles (seed 000's "frames as images", "patch-based processing"): item
    ``i`` is piece ``i % n`` of clip ``i // n``, recent clips cached (for long runs :class:`VideoChunks`)."""

    def __init__(self, clips: Dataset, pieces_per_clip: int, frames_as_images: bool, patch_size: int | None, cache: int = 8):
        self.clips, self.n, self.frames_as_images, self.patch_size = clips, pieces_per_clip, frames_as_images, patch_size
        self.cache, self.cache_size = OrderedDict(), cache
        self.classes = list(getattr(clips, "classes", []))

    def __len__(self) -> int:
        return len(self.clips) * self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor] | None:
        c = i // self.n
        if c not in self.cache:
            item = self.clips[c]
            self.cache[c] = None if item is None else explode(item, self.frames_as_images, self.patch_size)
            if len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)
        return None if (pieces := self.cache[c]) is None else pieces[i % self.n]


class VideoChunks(IterableDataset):
    """Seed 000's chunked training: hold ``videos_per_chunk`` clips (in frames/tiles) in memory, yield them
    shuffled ``epochs_per_chunk`` times, then the next chunk; an unreadable clip is yielded once as ``None``.
    With ``gan_epochs_per_chunk`` (seed 000: 10, then 5 GAN passes) items carry ``gan`` and ``chunk_pass``."""

    def __init__(
        self, clips: Dataset, videos_per_chunk: int, epochs_per_chunk: int = 1, frames_as_images: bool = False,
        patch_size: int | None = None, seed: int = 0, gan_epochs_per_chunk: int = 0,
    ):
        self.gan_epochs = max(0, gan_epochs_per_chunk)
        self.clips, self.per_chunk, self.epochs = clips, max(1, videos_per_chunk), max(1, epochs_per_chunk)
        self.frames_as_images, self.patch_size, self.seed, self.iteration = frames_as_images, patch_size, seed, 0
        self.classes = list(getattr(clips, "classes", []))
        first = next((clips[i] for i in range(min(len(clips), 4)) if clips[i] is not None), None)
        self.pieces = len(explode(first, frames_as_images, patch_size)) if first is not None else 1

    def __len__(self) -> int:
        """Items in one iteration (exact unless some videos are unreadable)."""
        return len(self.clips) * self.pieces * (self.epochs + self.gan_epochs)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + 7919 * self.iteration)
        self.iteration += 1
        order = torch.randperm(len(self.clips), generator=g).tolist()
        info = get_worker_info()  # chunks are split between the data-loader workers
        first, step = (info.id, info.num_workers) if info else (0, 1)
        for c in range(first, math.ceil(len(self.clips) / self.per_chunk), step):
            pieces = []
            for v in order[c * self.per_chunk : (c + 1) * self.per_chunk]:
                if (item := self.clips[v]) is None:
                    yield None
                else:
                    pieces += explode(item, self.frames_as_images, self.patch_size)
            for p in range(self.epochs + self.gan_epochs):
                tags = {"gan": torch.tensor(p >= self.epochs), "chunk_pass": torch.tensor(p)} if self.gan_epochs else {}
                for j in torch.randperm(len(pieces), generator=g).tolist():
                    yield {**pieces[j], **tags}


def pieces_per_clip(frames: int, frames_as_images: bool, resolution: int, patch_size: int | None) -> int:
    """How many items one clip becomes under :func:`explode`."""
    tiles = (resolution // patch_size) ** 2 if patch_size else 1
    return (frames if frames_as_images else 1) * tiles
