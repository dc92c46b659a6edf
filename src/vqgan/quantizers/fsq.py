"""Finite scalar quantization (Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made Simple",
https://arxiv.org/abs/2309.15505).

Each of ``d = len(levels)`` channels is bounded to ``L_i`` values and rounded; the implicit codebook is the
grid of all ``prod(levels)`` combinations: nothing to learn, nothing to collapse, no auxiliary loss. Latents
with more than ``d`` channels are projected down before and back up after the rounding. The bound follows
appendix A.1, with ``(1 + eps)`` as vector-quantize-pytorch uses it (``tests/test_quantizers_family.py``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vqgan.quantizers.base import Quantizer, QuantizerOutput, flatten_latents, unflatten_latents


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round with a straight-through gradient: forward ``round(x)``, backward the identity."""
    return x + (x.round() - x).detach()


class FSQ(Quantizer):
    """Finite scalar quantizer with ``levels[i]`` values on channel ``i`` and ``eps`` the bound's margin. The
    codebook size is the product of the levels (the paper recommends ``[8, 5, 5, 5]`` for about 2^10 codes
    and ``[8, 8, 8, 5, 5, 5]`` for about 2^16)."""

    def __init__(self, dim: int, levels: list[int], eps: float = 1e-3, usage_decay: float = 0.99):
        if any(level < 2 for level in levels):
            raise ValueError(f"FSQ levels must all be at least 2, got {levels}")
        super().__init__(dim, math.prod(levels), usage_decay)
        self.levels = list(levels)
        self.eps = eps
        lv = torch.tensor(levels, dtype=torch.float32)
        self.register_buffer("_levels", lv, persistent=False)
        self.register_buffer("_half_width", torch.floor(lv / 2), persistent=False)
        basis = torch.cumprod(torch.tensor([1, *levels[:-1]], dtype=torch.long), 0)
        self.register_buffer("_basis", basis, persistent=False)
        d = len(levels)
        self.project_in = nn.Linear(dim, d) if dim != d else nn.Identity()
        self.project_out = nn.Linear(d, dim) if dim != d else nn.Identity()

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """Squash ``z`` so that rounding yields ``levels[i]`` integers centred on 0 (offset by 1/2 for even L)."""
        half_l = (self._levels - 1) * (1 + self.eps) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half_l)
        return torch.tanh(z + shift) * half_l - offset

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """``(..., d)`` normalised codes -> ``(...)`` integer indices (mixed radix with the ``levels``)."""
        digits = (codes * self._half_width + self._half_width).round().long()
        return (digits * self._basis).sum(-1)

    def indices_to_level_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """``(...)`` indices -> ``(..., d)`` normalised codes (before ``project_out``)."""
        digits = (indices.long()[..., None] // self._basis) % self._levels.long()
        return (digits.float() - self._half_width) / self._half_width

    @property
    def codebook(self) -> torch.Tensor:
        codes = self.indices_to_level_codes(torch.arange(self.codebook_size, device=self._basis.device))
        return self.project_out(codes)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        flat = self.indices_to_level_codes(indices.reshape(-1))
        return unflatten_latents(self.project_out(flat), tuple(indices.shape))

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        flat, shape = flatten_latents(z)
        # Rounding in fp32 even under autocast: bf16 cannot hold the grid exactly. Codes lie in [-1, 1].
        codes = round_ste(self.bound(self.project_in(flat).float())) / self._half_width
        indices = self.codes_to_indices(codes.detach())
        quantized = unflatten_latents(self.project_out(codes.to(flat.dtype)), shape)
        loss = torch.zeros((), device=z.device, dtype=z.dtype)
        return QuantizerOutput(quantized, indices.reshape(shape), loss, {}, self._count_codes(indices)[1])
