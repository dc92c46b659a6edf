"""Checkpoints while training: atomic writes, safe ``weights_only`` loads (:mod:`vqgan.models.io`), resuming
from the newest good checkpoint, and exact resumption (data order, position in the epoch, random state)."""

from __future__ import annotations

import contextlib
import logging
import os
import random
from collections.abc import Callable, Iterator, Sized
from pathlib import Path
from typing import Any, BinaryIO

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DistributedSampler

from vqgan.models.io import CheckpointError, load_checkpoint_file, verify_checkpoint

log = logging.getLogger(__name__)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], Any]) -> Path:
    """``write(file)`` into ``.NAME.tmpPID``, ``fsync``, ``os.replace`` to ``path``: never a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` through :func:`atomic_write`. Not Lightning's (private) ``_atomic_save``: that one first
    serialises the whole checkpoint into memory (a second copy of a 2 GB checkpoint) and never ``fsync``s."""
    return atomic_write(path, lambda f: torch.save(obj, f))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint plugin: atomic saves and ``weights_only`` loads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint_file(path, map_location or "cpu")


def checkpoint_candidates(ckpt_dir: str | Path) -> list[Path]:
    """The ``*.ckpt`` files of ``ckpt_dir``, most advanced first: by the ``global_step`` they hold (a folder
    copied without its timestamps still resumes from its latest state), then by modification time."""

    def key(p: Path) -> tuple[int, int, bool, str]:
        try:
            step = int(load_checkpoint_file(p, mmap=True).get("global_step", -1))
        except (CheckpointError, TypeError, ValueError):
            step = -1
        return step, p.stat().st_mtime_ns, p.name == "last.ckpt", p.name

    return sorted((p for p in Path(ckpt_dir).glob("*.ckpt") if p.is_file()), key=key, reverse=True)


def remove_stale_temporaries(ckpt_dir: str | Path) -> list[Path]:
    """Delete ``.NAME.tmpPID`` files left by a writer that was killed (its process no longer exists)."""
    removed = []
    for p in Path(ckpt_dir).glob(".*.tmp*"):
        pid = p.name.rpartition(".tmp")[2]
        if not (pid.isdigit() and _process_alive(int(pid))):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else
        pass
    return True


def find_resume_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The newest checkpoint of ``ckpt_dir`` that passes :func:`verify_checkpoint` (``None`` if none). A
    damaged file is reported with a warning and skipped; :class:`CheckpointError` when all are unusable."""
    for p in remove_stale_temporaries(ckpt_dir):
        log.warning("removed %s, a checkpoint write that was interrupted", p)
    found, problems = None, []
    # Files that cannot even be opened sort last (their step is unknown), yet may be the newest ones written
    # (a truncated last.ckpt): those after the chosen one are opened too, so that none is skipped silently.
    for path in checkpoint_candidates(ckpt_dir):
        try:
            if found is None:
                verify_checkpoint(path)
            else:
                load_checkpoint_file(path, mmap=True)
        except CheckpointError as e:
            then = "trying the previous checkpoint" if found is None else "skipped"
            log.warning("cannot resume from %s, %s: %s", path, then, e)
            problems.append(str(e))
        else:
            found = found or path
    if problems and found is None:
        raise CheckpointError(f"no usable checkpoint in {ckpt_dir}:\n  " + "\n  ".join(problems))
    if problems:
        log.warning("resuming from %s (%d damaged checkpoint(s) skipped)", found, len(problems))
    return found


class ResumableSampler(DistributedSampler):
    """Shuffled order that is a function of ``(seed, epoch)`` only, can start part-way into an epoch (after a
    resume) and shards itself over the ranks (here, not in Lightning's re-shuffling wrapper). A dataset with
    ``accepts_global_index = True`` receives indices ``epoch * n + i``, so that its augmentations are the same
    in every process and across resumes, new every epoch."""

    def __init__(self, data_source: Sized, seed: int = 0, shuffle: bool = True):
        # Not DistributedSampler.__init__: no process group yet; rank and world are read when iterating.
        self.dataset, self.n, self.seed, self.shuffle = data_source, len(data_source), seed, shuffle
        self.drop_last, self.epoch = False, 0
        self.global_indices = bool(getattr(data_source, "accepts_global_index", False))
        self._start: tuple[int, int] | None = None  # (epoch, items to skip) after a resume

    @property
    def num_replicas(self) -> int:  # type: ignore[override]
        return torch.distributed.get_world_size() if _distributed() else 1

    @property
    def rank(self) -> int:  # type: ignore[override]
        return torch.distributed.get_rank() if _distributed() else 0

    def resume_at(self, epoch: int, items: int) -> None:
        """Make the next iteration of ``epoch`` skip its first ``items`` items (already trained on, all ranks)."""
        if items >= self.n:
            epoch, items = epoch + 1, 0
        self.epoch, self._start = epoch, (epoch, items)

    def __iter__(self) -> Iterator[int]:
        epoch = self.epoch
        skip = self._start[1] if self._start is not None and self._start[0] == epoch else 0
        self._start = None
        offset = epoch * self.n if self.global_indices else 0
        # The consumed items move to the end rather than being dropped: the epoch loop expects the length.
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = (torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)).roll(-skip)
        world, rank = self.num_replicas, self.rank
        if world > 1:
            total = -(-self.n // world) * world
            order = torch.cat([order, order[: total - self.n]])[rank::world]
        yield from (offset + int(i) for i in order)

    def __len__(self) -> int:
        return -(-self.n // self.num_replicas)


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def capture_rng_state() -> dict[str, Any]:
    """The global random states (torch CPU and CUDA, numpy, Python) as plain tensors and containers."""
    name, keys, *rest = np.random.get_state()
    numpy_state = [name, torch.from_numpy(keys.astype(np.int64)), *map(float, rest)]
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ResumeState(L.Callback):
    """Saves what Lightning does not, so that a resumed run continues exactly: the position in the epoch (for
    :class:`ResumableSampler`) and the global random states (k-means starts, dead-code restarts)."""

    def __init__(self, sampler: ResumableSampler | None = None, batch_size: int = 1):
        self.sampler, self.batch_size = sampler, batch_size
        self.epoch, self.batches = 0, 0
        self._rng: dict[str, Any] | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # Runs before the checkpoint callbacks (Lightning calls those last), so a save counts this batch.
        # After a resume, Lightning's batch index continues from the batches already done in the epoch.
        self.epoch, self.batches = trainer.current_epoch, batch_idx + 1

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["vqgan_resume"] = {"epoch": self.epoch, "batches": self.batches, "rng": capture_rng_state()}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("vqgan_resume")
        if state is None:
            log.warning("checkpoint has no data position: the resumed epoch starts from its beginning")
            return
        self.epoch, self.batches = int(state["epoch"]), int(state["batches"])
        if self.sampler is not None:
            items = self.batches * self.batch_size * trainer.world_size  # every rank consumed its batches
            self.sampler.resume_at(self.epoch, items)
            if items >= self.sampler.n:
                self.epoch, self.batches = self.epoch + 1, 0
        self._rng = state["rng"]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._rng is not None:
            restore_rng_state(self._rng)
            self._rng = None


class GuardedModelCheckpoint(ModelCheckpoint):
    """Writes nothing while ``pl_module.counters["nonfinite_streak"] > 0``: NaN weights never replace any."""

    def _should_skip_saving_checkpoint(self, trainer: L.Trainer) -> bool:
        streak = getattr(trainer.lightning_module, "counters", {}).get("nonfinite_streak", 0)
        if streak:
            log.debug("not writing a checkpoint: the last %d step(s) were non-finite", streak)
        return bool(streak) or super()._should_skip_saving_checkpoint(trainer)
