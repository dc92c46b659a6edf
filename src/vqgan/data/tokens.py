"""Token shards: a dataset encoded once by a stage-1 tokenizer, for training stage-2 priors without running the
tokenizer again. A token folder holds ``manifest.json`` and shards ``shard_NNNNN.safetensors`` (or
``shard_NNNNN.indices.npy`` / ``.labels.npy`` / ``.latents.npy`` with ``format="npy"``). Shard ``i`` holds
items ``[i S, (i + 1) S)`` of the (deterministically ordered) source dataset, is written atomically, and is
recorded in the manifest only once complete, so an interrupted encoding resumes at the first missing shard.
Each shard holds

- ``indices``: code indices ``(n, h, w)`` (int16 when the codebook has at most 32767 codes, else int32), or
  ``(n, t, h, w)`` for clips (a video tokenizer's latent frames, or every frame of an image tokenizer), and/or
- ``latents``: quantized or continuous latents ``(n, C, h, w)`` (float32), for downstream models;
- ``labels``: ``(n,)`` int64 class labels, ``-1`` for unlabelled items.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import load_file, save
from torch.utils.data import DataLoader, Dataset, Subset

from vqgan.data import pin_memory
from vqgan.data.images import collate_skip
from vqgan.progress import progress_bar

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_NAME = "vqgan-tokens"


class TokenFolderError(ValueError):
    """A token folder that is missing, incomplete or inconsistent with what is asked of it."""


@dataclass
class TokenManifest:
    """Description of a token folder (``manifest.json``).

    Attributes:
        what: ``indices`` (code indices), ``quantized`` or ``continuous`` (latents before quantization).
        num_items: items of the source dataset (the folder is complete when all are written).
        codebook_size: the tokenizer's number of codes (the prior's vocabulary).
        token_shape: ``[h, w]`` of one token map, ``[t, h, w]`` of one clip's token grid (``[C, h, w]`` /
            ``[C, t, h, w]`` of one latent for latents).
        num_classes: number of classes of the labels (0: unlabelled).
        file_format: ``safetensors`` or ``npy``.
        source: free-form provenance (tokenizer checkpoint, data config).
        shards: ``{"file": stem, "count": n, "skipped": k}`` of every completed shard, in order (``k``
            unreadable items of the shard were left out; ``file`` is ``None`` when every item was).
    """

    what: str = "indices"
    num_items: int = 0
    shard_size: int = 1024
    codebook_size: int = 0
    token_shape: list[int] = field(default_factory=list)
    num_classes: int = 0
    class_names: list[str] = field(default_factory=list)
    file_format: str = "safetensors"
    source: dict[str, Any] = field(default_factory=dict)
    shards: list[dict[str, Any]] = field(default_factory=list)
    format: str = FORMAT_NAME
    version: int = 1

    @property
    def num_shards(self) -> int:
        return (self.num_items + self.shard_size - 1) // self.shard_size

    @property
    def complete(self) -> bool:
        return len(self.shards) == self.num_shards

    @property
    def num_written(self) -> int:
        return sum(s["count"] for s in self.shards)

    @property
    def skipped(self) -> int:
        """Items of the source dataset left out because they could not be read (corrupt or truncated files)."""
        return sum(s.get("skipped", 0) for s in self.shards)


def read_manifest(root: str | Path) -> TokenManifest:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise TokenFolderError(f"{path} not found: is {root} a token folder written by `vqgan encode`?")
    data = json.loads(path.read_text())
    if data.get("format") != FORMAT_NAME:
        raise TokenFolderError(f"{path} is not a {FORMAT_NAME} manifest")
    return TokenManifest(**{k: v for k, v in data.items() if k in TokenManifest.__dataclass_fields__})


def _write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary name, then rename: a reader never sees a partial file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _save_shard(root: Path, stem: str, arrays: dict[str, torch.Tensor], file_format: str) -> None:
    arrays = {k: v.detach().cpu().contiguous() for k, v in arrays.items()}
    if file_format == "safetensors":
        _write_atomic(root / f"{stem}.safetensors", save(arrays, metadata={"library": "vqgan"}))
    elif file_format == "npy":
        for k, v in arrays.items():
            buffer = io.BytesIO()
            np.save(buffer, v.numpy(), allow_pickle=False)
            _write_atomic(root / f"{stem}.{k}.npy", buffer.getvalue())
    else:
        raise ValueError(f"file_format={file_format!r}; choose safetensors or npy")


def load_shard(root: str | Path, stem: str, file_format: str) -> dict[str, torch.Tensor]:
    """The arrays of one shard (no code is executed: safetensors, or ``np.load(allow_pickle=False)``)."""
    pattern = f"{stem}.safetensors" if file_format == "safetensors" else f"{stem}.*.npy"
    if not (paths := sorted(Path(root).glob(pattern))):
        raise TokenFolderError(f"shard {Path(root) / pattern} listed in the manifest is missing")
    if file_format == "safetensors":
        return load_file(str(paths[0]))
    return {p.name[len(stem) + 1 : -4]: torch.from_numpy(np.load(p, allow_pickle=False)) for p in paths}


def _encode(model: torch.nn.Module, x: torch.Tensor):
    """``model.encode(x)``; a batch of clips given to an image model is encoded frame by frame and the outputs
    regrouped per clip (indices ``(B, T, h, w)``, latents ``(B, C, T, h, w)``)."""
    if x.dim() != 5 or getattr(model.config, "arch", None) == "video3d":
        return model.encode(x)
    enc = model.encode(x.transpose(1, 2).flatten(0, 1))
    for name in ("indices", "quantized", "latents"):
        if (v := getattr(enc, name, None)) is not None:
            v = v.unflatten(0, (x.shape[0], x.shape[2]))
            setattr(enc, name, v if name == "indices" else v.transpose(1, 2))
    return enc


@torch.no_grad()
def encode_dataset(
    model: torch.nn.Module, dataset: Dataset, output: str | Path,
    what: Literal["indices", "quantized", "continuous"] = "indices", shard_size: int = 1024,
    batch_size: int = 64, file_format: Literal["safetensors", "npy"] = "safetensors", device: str = "cpu",
    num_workers: int = 0, source: dict[str, Any] | None = None, progress: bool = True,
    max_shards: int | None = None,
) -> TokenManifest:
    """Encode every item of ``dataset`` (dicts with ``image``, optionally ``label``) with a stage-1 ``model``
    into a token folder, resuming an interrupted run of the same settings; returns the manifest. Clips
    ``(C, T, H, W)`` become token grids ``(t, h, w)``: a video model's latent frames, or every frame (t = T).
    ``max_shards`` stops after that many new shards. Unreadable items are left out and counted."""
    if what not in ("indices", "quantized", "continuous"):
        raise ValueError(f"what={what!r}; choose indices, quantized or continuous")
    root = Path(output)
    root.mkdir(parents=True, exist_ok=True)
    model = model.to(device).eval()
    codebook_size = int(model.quantize.codebook_size)
    n = len(dataset)
    classes = list(getattr(dataset, "classes", []) or [])
    expected = dict(what=what, num_items=n, shard_size=shard_size, codebook_size=codebook_size, file_format=file_format)
    fresh = TokenManifest(**expected, num_classes=len(classes), class_names=classes, source=source or {})
    manifest = read_manifest(root) if (root / MANIFEST).is_file() else fresh
    if (have := {k: getattr(manifest, k) for k in expected}) != expected:
        raise TokenFolderError(
            f"{root} already holds tokens written with other settings {have}; asked for {expected}. "
            "Use another output folder."
        )
    if manifest.shards:
        log.info("resuming: %d of %d shards already written in %s", len(manifest.shards), manifest.num_shards,
                 root)
    key = "indices" if what == "indices" else "latents"
    attr = "latents" if what == "continuous" else what  # the encoder output: continuous ones are ``latents``
    dtype = torch.float32 if key == "latents" else torch.int16 if codebook_size <= 32767 else torch.int32
    with progress_bar(n, f"encode {what}", progress, completed=manifest.num_written) as advance:
        for s in range(len(manifest.shards), manifest.num_shards)[:max_shards]:
            lo, hi = s * shard_size, min(n, (s + 1) * shard_size)
            loader = DataLoader(Subset(dataset, range(lo, hi)), batch_size, num_workers=num_workers,
                                collate_fn=collate_skip, pin_memory=pin_memory(device))
            data, labels, skipped = [], [], 0
            for batch in loader:
                skipped += (lost := int(batch.pop("skipped")))
                if "image" not in batch:  # every item of the batch was unreadable
                    advance(lost)
                    continue
                x = batch["image"].to(device, non_blocking=True)
                labels.append(batch.get("label", torch.full((x.shape[0],), -1)).long().cpu())
                out = getattr(_encode(model, x), attr)
                if what == "indices" and out.dim() != x.dim() - 1:
                    raise TokenFolderError(
                        f"indices of shape {tuple(out.shape)}: the priors model one index per position; "
                        "multi-stage (residual) codes are not supported for `what=indices`"
                    )
                data.append(out.to(dtype).cpu())
                advance(x.shape[0] + lost)
            stem = f"shard_{s:05d}" if data else None
            if data:
                arrays = {key: torch.cat(data), "labels": torch.cat(labels)}
                _save_shard(root, stem, arrays, file_format)
                manifest.token_shape = manifest.token_shape or list(arrays[key].shape[1:])
                if not manifest.class_names:
                    manifest.num_classes = max(manifest.num_classes, int(arrays["labels"].max()) + 1)
            if skipped:
                log.warning("shard %d: %d of %d items could not be read and were left out", s, skipped, hi - lo)
            # A shard whose every item was unreadable is recorded with no file (count 0), so that resumption moves on.
            manifest.shards.append({"file": stem, "count": hi - lo - skipped, "skipped": skipped})
            text = json.dumps({**asdict(manifest), "complete": manifest.complete}, indent=2)
            _write_atomic(root / MANIFEST, text.encode())
    return manifest


class TokenDataset(Dataset):
    """Items ``{"tokens": (h, w) or (t, h, w) int64, "label": int64}`` (``{"latents": (C, h, w), "label"}``)
    of a complete token folder (``allow_incomplete``: the shards written so far), loaded into memory once."""

    def __init__(self, root: str | Path, allow_incomplete: bool = False):
        self.root = Path(root)
        self.manifest = m = read_manifest(self.root)
        if not m.complete and not allow_incomplete:
            raise TokenFolderError(
                f"{self.root} is incomplete ({len(m.shards)} of {m.num_shards} shards): run the same "
                "`vqgan encode` command again to finish it"
            )
        # A shard of count 0 has no file: every item of it was unreadable.
        if not (shards := [load_shard(self.root, s["file"], m.file_format) for s in m.shards if s["count"]]):
            raise TokenFolderError(f"{self.root} holds no items (no shards, or no readable source items)")
        self.key = "tokens" if m.what == "indices" else "latents"
        data = torch.cat([a["indices" if m.what == "indices" else "latents"] for a in shards])
        self.data = data.long() if m.what == "indices" else data.float()
        self.labels = torch.cat([a["labels"] for a in shards]).long()
        self.indices: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.data) if self.indices is None else len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        j = i if self.indices is None else int(self.indices[i])
        return {self.key: self.data[j], "label": self.labels[j]}

    def subset(self, indices: Iterable[int]) -> TokenDataset:
        """A view of some items (positions into this dataset), sharing the loaded arrays."""
        view = type(self).__new__(type(self))
        view.__dict__.update(self.__dict__)
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        view.indices = idx if self.indices is None else self.indices[idx]
        return view

    def code_histogram(self) -> torch.Tensor:
        """Counts of every code over the (subset of the) folder's token maps."""
        if self.key != "tokens":
            raise TokenFolderError("code histograms exist only for index folders")
        data = self.data if self.indices is None else self.data[self.indices]
        return torch.bincount(data.flatten(), minlength=self.manifest.codebook_size)


def resolve_token_folders(tokens: str | Path) -> tuple[Path, Path | None]:
    """``TOKENS`` itself (a folder with a manifest) or ``TOKENS/train``, and ``TOKENS/val`` if it exists."""
    root, val = Path(tokens), Path(tokens) / "val"
    for train in (root, root / "train"):
        if (train / MANIFEST).is_file():
            return train, val if (val / MANIFEST).is_file() else None
    raise TokenFolderError(f"no token folder at {root} (expected {root}/manifest.json): run `vqgan encode` first")
