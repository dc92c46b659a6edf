"""Residual vector quantization (Zeghidour et al. 2021, "SoundStream", https://arxiv.org/abs/2107.03312; Lee et
al. 2022, "Autoregressive Image Generation using Residual Quantization", https://arxiv.org/abs/2203.01941).

Stage ``s`` quantizes what the previous stages left over, ``r_s = z - sum_{t<s} q_t``; the output is ``sum_s q_s``
and the indices gain a last axis of length ``S``. Any quantizer of this package can be a stage.

Gradients: the decoder's gradient reaches the encoder exactly once, through the first stage's straight-through
estimator (the residuals fed to later stages are detached), so ``d quantized / d z`` is the identity as for a
single quantizer; the later stages learn from their own losses and from the decoder's gradient on their output
projections. (Feeding every stage an undetached residual, as some implementations do, multiplies the encoder's
gradient by ``S``.)
"""

from __future__ import annotations

import torch
from torch import nn

from vqgan.quantizers.base import Quantizer, QuantizerOutput


class ResidualQuantizer(Quantizer):
    """``S`` quantizers applied to successive residuals.

    Args:
        stages: the stage quantizers (all reading and returning ``dim`` channels).

    ``codebook_size``, :attr:`codebook` and the diagnostics refer to the first stage; ``stats`` also has
    ``usage_stage{s}`` and ``perplexity_stage{s}`` for every stage.
    """

    def __init__(self, stages: list[Quantizer]):
        if not stages:
            raise ValueError("a residual quantizer needs at least one stage")
        first = stages[0]
        super().__init__(first.dim, first.codebook_size, first.usage_decay, first.dead_code_threshold)
        self.stages = nn.ModuleList(stages)

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def diagnostic_target(self) -> Quantizer:
        return self.stages[0].diagnostic_target

    @property
    def codebook(self) -> torch.Tensor:
        return self.stages[0].codebook

    def codebook_grad(self) -> torch.Tensor | None:
        return self.stages[0].codebook_grad()

    def pop_window(self) -> dict[str, torch.Tensor]:
        return self.diagnostic_target.pop_window()

    def dead_codes(self, threshold: float | None = None) -> torch.Tensor:
        return self.diagnostic_target.dead_codes(threshold)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        total = self.stages[0].indices_to_codes(indices[..., 0])
        for s in range(1, len(self.stages)):
            total = total + self.stages[s].indices_to_codes(indices[..., s])
        return total

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        outputs: list[QuantizerOutput] = []
        residual = z
        total: torch.Tensor | None = None
        for stage in self.stages:
            out = stage(residual)
            outputs.append(out)
            total = out.quantized if total is None else total + out.quantized
            residual = (z - total).detach()
        assert total is not None
        loss = outputs[0].loss
        for out in outputs[1:]:
            loss = loss + out.loss
        losses: dict[str, torch.Tensor] = {}
        stats: dict[str, torch.Tensor] = dict(outputs[0].stats)
        for s, out in enumerate(outputs):
            losses.update({f"{k}_stage{s}": v for k, v in out.losses.items()})
            stats.update({f"{k}_stage{s}": v for k, v in out.stats.items()})
        indices = torch.stack([out.indices for out in outputs], dim=-1)
        return QuantizerOutput(total, indices, loss, losses, stats)
