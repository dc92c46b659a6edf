"""SimVQ (Zhu et al. 2024, "Addressing Representation Collapse in Vector Quantized Models with One Linear Layer",
https://arxiv.org/abs/2411.02038).

The codebook ``C`` is random and frozen; the codes are ``C W`` for one learned linear map ``W``. A gradient
step on ``W`` moves every code at once (not only those selected in the batch), so the whole codebook follows
the encoder and codes do not die. The loss is VQ-VAE's with the codebook term trained into ``W``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vqgan.quantizers.base import (
    Quantizer,
    QuantizerOutput,
    flatten_latents,
    straight_through,
    unflatten_latents,
)
from vqgan.quantizers.vq import check_beta_on, lookup


class SimVQ(Quantizer):
    """Frozen random codebook followed by a learned linear map, codes of ``dim`` channels. ``beta`` weights
    the term named by ``beta_on`` (``codebook`` is the one that trains the map); ``seed`` makes the frozen
    codebook the same on every rank without communication."""

    def __init__(
        self, dim: int, codebook_size: int, beta: float = 0.25, search_chunk_size: int = 8192,
        usage_decay: float = 0.99, seed: int = 0, beta_on: str = "commitment",
    ):
        super().__init__(dim, codebook_size, usage_decay)
        check_beta_on(beta_on)
        self.beta, self.beta_on, self.search_chunk_size = beta, beta_on, search_chunk_size
        g = torch.Generator().manual_seed(seed)
        # N(0, 1/d) entries: codes of unit expected norm, as in the paper's reference code.
        self.register_buffer("frozen_codebook", torch.randn(codebook_size, dim, generator=g) * dim**-0.5)
        self.code_transform = nn.Linear(dim, dim, bias=False)

    @property
    def codebook(self) -> torch.Tensor:
        return self.code_transform(self.frozen_codebook)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        return unflatten_latents(F.embedding(indices.reshape(-1), self.codebook), tuple(indices.shape))

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        flat, shape = flatten_latents(z)
        q, indices, loss, losses = lookup(
            flat, self.codebook, self.beta, self.beta_on, self.search_chunk_size
        )
        quantized = unflatten_latents(straight_through(flat, q), shape)
        return QuantizerOutput(quantized, indices.reshape(shape), loss, losses, self._count_codes(indices)[1])
