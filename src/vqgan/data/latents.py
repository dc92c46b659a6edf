"""Continuous latents for the flow-matching prior (``vqgan encode --what continuous`` or ``quantized``: seed
004's options B and C; a learned projection of them: option A) and their per-channel statistics."""

from __future__ import annotations

from pathlib import Path

import torch

from vqgan.data.tokens import TokenDataset, TokenFolderError


class LatentDataset(TokenDataset):
    """Items ``{"latents": (C, h, w) float32, "label": int64}`` of a latent folder, optionally projected by a
    :class:`~vqgan.interop.projection.LatentProjection` reading the folder's kind and channels of latents."""

    def __init__(self, root: str | Path, projection: torch.nn.Module | None = None, batch_size: int = 256):
        super().__init__(root)
        if self.key != "latents":
            raise TokenFolderError(
                f"{root} holds code indices; a flow prior trains on latents: write them with "
                "`vqgan encode --what continuous` (or `--what quantized`)"
            )
        if projection is not None:
            pc, what, latents = projection.config, self.manifest.what, self.data
            if pc.source != what:
                raise TokenFolderError(
                    f"the projection reads {pc.source} latents but {root} holds {what} latents: "
                    f"encode with `--what {pc.source}` or fit the projection with `--source {what}`"
                )
            if pc.in_channels != latents.shape[1]:
                raise TokenFolderError(f"the projection reads {pc.in_channels} channels; {root} holds {latents.shape[1]}")
            projection = projection.eval()
            with torch.no_grad():
                self.data = torch.cat([projection.project(b) for b in latents.split(batch_size)])
        self.data = self.latents = self.data.float().contiguous()  # (n, C, h, w), after the projection

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(C, h, w)`` of one item (after the projection)."""
        return tuple(self.data.shape[1:])  # type: ignore[return-value]

    def statistics(self, batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and standard deviation ``(C,)`` of this (subset of the) set, in batches."""
        from vqgan.interop.projection import channel_statistics

        data = self.data if self.indices is None else self.data[self.indices]
        mean, std, _ = channel_statistics(data.split(batch_size))
        return mean, std
