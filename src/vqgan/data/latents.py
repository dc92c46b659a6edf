"""Continuous latents for the flow-matching prior: a dataset over latent shards written by ``vqgan encode --what
continuous`` or ``--what quantized`` (seed 004's option B, and option C with a tokenizer of ``N``-channel latents),
optionally passed through a learned projection (option A, :mod:`vqgan.interop.projection`), and per-channel
statistics of the whole set for normalisation.

The statistics are streamed over batches with the parallel update of Chan et al. (1979) in float64, so that they
cover every latent of the set without holding more than one batch in float64 (torch and torchmetrics have no
streaming per-channel variance).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset

from vqgan.data.tokens import TokenDataset, TokenFolderError, TokenManifest


@dataclass
class LatentStatistics:
    """Running per-channel count, mean and sum of squared deviations of latents ``(B, C, *spatial)``.

    Attributes:
        count: values seen per channel (items times positions).
        mean: ``(C,)`` float64 running mean.
        m2: ``(C,)`` float64 running sum of squared deviations from the mean.
    """

    count: int = 0
    mean: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))
    m2: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))

    def update(self, batch: torch.Tensor) -> LatentStatistics:
        """Merge one batch (Chan et al.'s pairwise update of mean and ``M2``)."""
        x = batch.detach().double().transpose(0, 1).reshape(batch.shape[1], -1)
        n_b = x.shape[1]
        if n_b == 0:
            return self
        mean_b = x.mean(1)
        m2_b = (x - mean_b[:, None]).pow(2).sum(1)
        if self.count == 0:
            self.count, self.mean, self.m2 = n_b, mean_b.cpu(), m2_b.cpu()
            return self
        if mean_b.shape != self.mean.shape:
            raise ValueError(f"batch of {mean_b.shape[0]} channels after {self.mean.shape[0]}")
        n = self.count + n_b
        delta = mean_b.cpu() - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b.cpu() + delta.pow(2) * (self.count * n_b / n)
        self.count = n
        return self

    @property
    def std(self) -> torch.Tensor:
        """Unbiased per-channel standard deviation ``(C,)`` (float64)."""
        if self.count < 2:
            raise ValueError("standard deviation needs at least two values per channel")
        return (self.m2 / (self.count - 1)).sqrt()


def latent_statistics(batches: Iterable[torch.Tensor | dict[str, torch.Tensor]]) -> LatentStatistics:
    """Per-channel statistics of every latent in ``batches`` (tensors ``(B, C, *spatial)`` or dicts with
    ``latents``, e.g. a DataLoader over a :class:`LatentDataset`)."""
    stats = LatentStatistics()
    for batch in batches:
        stats.update(batch["latents"] if isinstance(batch, dict) else batch)
    if stats.count == 0:
        raise ValueError("latent_statistics: no latents")
    return stats


class LatentDataset(Dataset):
    """Items ``{"latents": (C, h, w) float32, "label": int64}`` of a complete latent folder, loaded into memory
    once (latent maps are small), optionally projected to ``N`` channels.

    Args:
        root: a folder written by ``vqgan encode --what continuous`` or ``--what quantized``.
        projection: a :class:`~vqgan.interop.projection.LatentProjection` applied to every latent at load time;
            it must read the folder's kind of latents (its ``source``) and channel count.
        indices: optional subset (positions into the folder's items).
        batch_size: items projected at a time.
    """

    def __init__(
        self,
        root: str | Path,
        projection: torch.nn.Module | None = None,
        indices: Iterable[int] | None = None,
        batch_size: int = 256,
    ):
        tokens = TokenDataset(root)
        self.root, self.manifest = Path(root), tokens.manifest
        if tokens.key != "latents":
            raise TokenFolderError(
                f"{root} holds code indices; a flow prior trains on latents: write them with "
                "`vqgan encode --what continuous` (or `--what quantized`)"
            )
        latents = tokens.data
        if projection is not None:
            pc = projection.config
            if pc.source != self.manifest.what:
                raise TokenFolderError(
                    f"the projection reads {pc.source} latents but {root} holds {self.manifest.what} latents: "
                    f"encode with `--what {pc.source}` or fit the projection with `--source {self.manifest.what}`"
                )
            if pc.in_channels != latents.shape[1]:
                raise TokenFolderError(f"the projection reads {pc.in_channels} channels; {root} holds {latents.shape[1]}")
            projection = projection.eval()
            with torch.no_grad():
                latents = torch.cat([projection.project(latents[i : i + batch_size]) for i in range(0, len(latents), batch_size)])
        self.latents, self.labels = latents.float().contiguous(), tokens.labels
        self.indices = None if indices is None else torch.as_tensor(list(indices), dtype=torch.long)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(C, h, w)`` of one item (after the projection)."""
        return tuple(self.latents.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return self.manifest.num_classes

    def __len__(self) -> int:
        return len(self.latents) if self.indices is None else len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        j = i if self.indices is None else int(self.indices[i])
        return {"latents": self.latents[j], "label": self.labels[j]}

    def subset(self, indices: Iterable[int]) -> LatentDataset:
        """A view of some items (positions into this dataset), sharing the loaded arrays."""
        view = LatentDataset.__new__(LatentDataset)
        view.__dict__.update(self.__dict__)
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        view.indices = idx if self.indices is None else self.indices[idx]
        return view

    def statistics(self, batch_size: int = 1024) -> LatentStatistics:
        """Per-channel statistics of every latent of this (subset of the) set, streamed in batches."""
        data = self.latents if self.indices is None else self.latents[self.indices]
        return latent_statistics(data[i : i + batch_size] for i in range(0, len(data), batch_size))


def is_latent_folder(root: str | Path) -> bool:
    """Whether ``root`` is a token folder of latents (not code indices)."""
    from vqgan.data.tokens import read_manifest

    try:
        manifest: TokenManifest = read_manifest(root)
    except TokenFolderError:
        return False
    return manifest.what in ("quantized", "continuous")
