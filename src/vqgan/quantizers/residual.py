"""Residual vector quantization (Zeghidour et al. 2021, "SoundStream", https://arxiv.org/abs/2107.03312; Lee et
al. 2022, "Autoregressive Image Generation using Residual Quantization", https://arxiv.org/abs/2203.01941).

Stage ``s`` quantizes what the previous stages left over, ``r_s = z - sum_{t<s} q_t``; the output is
``sum_s q_s`` and the indices gain a last axis of length ``S``. Any quantizer of this package can be a stage.
The residuals fed to later stages are detached, so the decoder's gradient reaches the encoder once, through
the first stage (feeding undetached residuals, as some implementations do, multiplies it by ``S``).
"""

from __future__ import annotations

import torch
from torch import nn

from vqgan.quantizers.base import Quantizer, QuantizerOutput


class ResidualQuantizer(Quantizer):
    """``S`` quantizers (all reading and returning ``dim`` channels) applied to successive residuals.

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

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        codes = [stage.indices_to_codes(indices[..., s]) for s, stage in enumerate(self.stages)]
        return sum(codes[1:], codes[0])

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        outputs = [self.stages[0](z)]
        total = outputs[0].quantized
        for stage in self.stages[1:]:
            outputs.append(stage((z - total).detach()))
            total = total + outputs[-1].quantized
        losses: dict[str, torch.Tensor] = {}
        stats: dict[str, torch.Tensor] = dict(outputs[0].stats)
        for s, out in enumerate(outputs):
            losses.update({f"{k}_stage{s}": v for k, v in out.losses.items()})
            stats.update({f"{k}_stage{s}": v for k, v in out.stats.items()})
        loss = sum((out.loss for out in outputs[1:]), outputs[0].loss)
        indices = torch.stack([out.indices for out in outputs], dim=-1)
        return QuantizerOutput(total, indices, loss, losses, stats)
