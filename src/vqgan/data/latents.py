"""Continuous latents for the flow-matching prior: a dataset over latent shards written by ``vqgan encode --what
continuous`` or ``--what quantized`` (seed 004's option B, and option C with a tokenizer of ``N``-channel latents),
optionally passed through a learned projection (option A, :mod:`vqgan.interop.projection`), and per-channel
statistics of the whole set for normalisation (streamed with the projection's
:func:`~vqgan.interop.projection.channel_statistics`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch.utils.data import Dataset

from vqgan.data.tokens import TokenDataset, TokenFolderError, TokenManifest


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

    def statistics(self, batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and standard deviation ``(C,)`` of every latent of this (subset of the) set, streamed
        in batches."""
        from vqgan.interop.projection import channel_statistics

        data = self.latents if self.indices is None else self.latents[self.indices]
        mean, std, _ = channel_statistics(data[i : i + batch_size] for i in range(0, len(data), batch_size))
        return mean, std


def is_latent_folder(root: str | Path) -> bool:
    """Whether ``root`` is a token folder of latents (not code indices)."""
    from vqgan.data.tokens import read_manifest

    try:
        manifest: TokenManifest = read_manifest(root)
    except TokenFolderError:
        return False
    return manifest.what in ("quantized", "continuous")
