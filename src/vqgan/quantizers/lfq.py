"""Lookup-free quantization (Yu et al. 2023, "Language Model Beats Diffusion: Tokenizer is Key to Visual
Generation" (MAGVIT-v2), https://arxiv.org/abs/2310.05737).

Each of ``b = log2(K)`` channels is quantized to its sign, ``{-s, +s}``; the index is the binary number of
the signs. MAGVIT-v2's entropy terms on the soft assignment ``p(c | z) = softmax_c(2 z.c / T)`` ask for
confident assignments (low per-sample entropy) that use every code (high entropy of the batch average). On the
hypercube ``p(c | z)`` factorises over bits, ``p(c_i = +s | z) = sigmoid(4 s z_i / T)``, so the per-sample
entropy is a sum of ``b`` binary entropies (no ``N x K`` matrix). The batch entropy is exact up to
``exact_entropy_max_codes``; above, it is the sum of per-bit entropies of the averaged bit probabilities (an
upper bound, tight when the bits are used independently).
"""

from __future__ import annotations

import math

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


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of Bernoulli(p), elementwise."""
    p = p.clamp(1e-7, 1 - 1e-7)
    return -(p * p.log() + (1 - p) * (1 - p).log())


class LFQ(Quantizer):
    """Lookup-free quantizer with ``codebook_size = 2 ** bits`` implicit codes, ``codebook_scale`` in each
    channel, for latents of ``dim`` channels (projected to ``bits`` when different). ``beta`` weights the
    commitment ``||z - sg[q]||^2``; the per-sample entropy (minimised) and the entropy of the mean assignment
    (maximised) have their own weights, at ``temperature`` ``T``."""

    def __init__(
        self, dim: int, codebook_size: int, beta: float = 0.25, sample_entropy_weight: float = 0.1,
        codebook_entropy_weight: float = 0.1, temperature: float = 0.01, codebook_scale: float = 1.0,
        exact_entropy_max_codes: int = 4096, usage_decay: float = 0.99,
    ):
        bits = int(round(math.log2(codebook_size)))
        if 2**bits != codebook_size:
            raise ValueError(f"LFQ needs a power-of-two codebook_size, got {codebook_size}")
        super().__init__(dim, codebook_size, usage_decay)
        self.bits, self.beta = bits, beta
        self.sample_entropy_weight, self.codebook_entropy_weight = sample_entropy_weight, codebook_entropy_weight
        self.temperature, self.codebook_scale = temperature, codebook_scale
        self.exact_entropy_max_codes = exact_entropy_max_codes
        self.register_buffer("_bit_values", 2 ** torch.arange(bits, dtype=torch.long), persistent=False)
        self.project_in = nn.Linear(dim, bits) if dim != bits else nn.Identity()
        self.project_out = nn.Linear(bits, dim) if dim != bits else nn.Identity()

    def indices_to_bit_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """``(...)`` indices -> ``(..., bits)`` codes in ``{-s, +s}`` (bit ``i`` of the index is channel ``i``)."""
        bits = (indices.long()[..., None] & self._bit_values) > 0
        return torch.where(bits, self.codebook_scale, -self.codebook_scale)

    @property
    def codebook(self) -> torch.Tensor:
        codes = self.indices_to_bit_codes(torch.arange(self.codebook_size, device=self._bit_values.device))
        return self.project_out(codes)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        flat = self.indices_to_bit_codes(indices.reshape(-1))
        return unflatten_latents(self.project_out(flat), tuple(indices.shape))

    def entropy_terms(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean per-sample entropy and entropy of the mean assignment of ``softmax(2 h.c / T)`` (nats)."""
        p_bits = torch.sigmoid(4 * self.codebook_scale * h / self.temperature)  # p(bit i = +s | z)
        sample_entropy = binary_entropy(p_bits).sum(-1).mean()
        if self.codebook_size > self.exact_entropy_max_codes:
            return sample_entropy, binary_entropy(p_bits.mean(0)).sum()
        codes = self.indices_to_bit_codes(torch.arange(self.codebook_size, device=h.device)).to(h.dtype)
        avg = (2 * h @ codes.t() / self.temperature).softmax(-1).mean(0)
        return sample_entropy, -(avg * avg.clamp_min(1e-12).log()).sum()

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        flat, shape = flatten_latents(z)
        h = self.project_in(flat)
        positive = h > 0
        q = torch.where(positive, self.codebook_scale, -self.codebook_scale).to(h.dtype)
        indices = (positive.long() * self._bit_values).sum(-1)
        commitment = F.mse_loss(h, q)
        losses = {"commitment": commitment.detach()}
        loss = self.beta * commitment
        if self.training and (self.sample_entropy_weight > 0 or self.codebook_entropy_weight > 0):
            sample_entropy, codebook_entropy = self.entropy_terms(h.float())
            losses.update(sample_entropy=sample_entropy.detach(), codebook_entropy=codebook_entropy.detach())
            loss = loss + self.sample_entropy_weight * sample_entropy - self.codebook_entropy_weight * codebook_entropy
        quantized = unflatten_latents(self.project_out(straight_through(h, q)), shape)
        return QuantizerOutput(quantized, indices.reshape(shape), loss, losses, self._count_codes(indices)[1])
