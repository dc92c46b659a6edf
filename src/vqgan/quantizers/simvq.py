"""SimVQ (Zhu et al. 2024, "Addressing Representation Collapse in Vector Quantized Models with One Linear Layer",
https://arxiv.org/abs/2411.02038).

The codebook ``C`` is random and frozen; the codes are ``C W`` for one learned linear map ``W``. A gradient step on
``W`` moves every code at once (not only the ones selected in the batch, as with a learned codebook), so the whole
codebook follows the encoder's distribution and codes do not die. The loss is the VQ-VAE one with the codebook term
back-propagated into ``W``: ``||sg[z] - C W||^2 + beta ||z - sg[C W]||^2``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vqgan.quantizers.base import (
    Quantizer,
    QuantizerOutput,
    all_reduce_sum,
    code_histogram,
    flatten_latents,
    perplexity_and_usage,
    unflatten_latents,
)
from vqgan.quantizers.vq import nearest_code, vq_terms


class SimVQ(Quantizer):
    """Frozen random codebook followed by a learned linear map.

    Args:
        dim: channels of the latents (codes live in this space).
        codebook_size: number of codes.
        beta: weight of the term named by ``beta_on`` (the other term has weight 1).
        beta_on: ``commitment`` (the encoder term) or ``codebook`` (the term that trains the linear map).
        search_chunk_size: codes per chunk of the nearest-code search.
        seed: seed of the frozen codebook, so that it is the same on every rank without communication.
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        beta: float = 0.25,
        search_chunk_size: int = 8192,
        usage_decay: float = 0.99,
        seed: int = 0,
        beta_on: str = "commitment",
    ):
        super().__init__(dim, codebook_size, usage_decay)
        if beta_on not in ("commitment", "codebook"):
            raise ValueError(f"beta_on={beta_on!r} must be 'commitment' or 'codebook'")
        self.beta, self.beta_on, self.search_chunk_size = beta, beta_on, search_chunk_size
        g = torch.Generator().manual_seed(seed)
        # N(0, 1/d) entries: codes of unit expected norm, as in the paper's reference code.
        self.register_buffer("frozen_codebook", torch.randn(codebook_size, dim, generator=g) * dim**-0.5)
        self.code_transform = nn.Linear(dim, dim, bias=False)

    @property
    def codebook(self) -> torch.Tensor:
        return self.code_transform(self.frozen_codebook)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        flat = F.embedding(indices.reshape(-1), self.codebook)
        return unflatten_latents(flat, tuple(indices.shape))

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        flat, shape = flatten_latents(z)
        codebook = self.codebook
        with torch.no_grad():
            indices = nearest_code(flat.detach(), codebook.detach().to(flat.dtype), self.search_chunk_size)
        q = F.embedding(indices, codebook)
        commitment = F.mse_loss(flat, q.detach())
        codebook_loss = F.mse_loss(q, flat.detach())
        loss = vq_terms(commitment, codebook_loss, self.beta, self.beta_on)
        losses = {"commitment": commitment.detach(), "codebook": codebook_loss.detach()}
        counts = code_histogram(indices, self.codebook_size)
        if self.training:
            with torch.no_grad():
                all_reduce_sum(counts)
                self._track_usage(counts)
        q_st = q.detach() + (flat - flat.detach())
        quantized = unflatten_latents(q_st, shape)
        return QuantizerOutput(quantized, indices.reshape(shape), loss, losses, perplexity_and_usage(counts))
