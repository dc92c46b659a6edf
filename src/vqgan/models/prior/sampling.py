"""Pure sampling helpers shared by both priors: logit filtering (temperature, top-k, nucleus/top-p of Holtzman et
al. 2020), classifier-free guidance (Ho & Salimans 2022) and a seeded categorical draw.

Draws go through the inverse CDF with one uniform number per row (:func:`sample_logits`), so the same generator
state gives the same token whatever the path that computed the logits (with or without a KV cache), up to ties
within floating-point rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PriorOutput:
    """Result of a prior's forward pass.

    Attributes:
        logits: ``(B, T, vocab_size)`` scores of the tokens at the predicted positions.
        loss: mean cross-entropy over the supervised positions (``None`` without targets).
        accuracy: share of supervised positions whose arg-max equals the target (``None`` without targets).
    """

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    accuracy: torch.Tensor | None = None


def classifier_free_guidance(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Guided logits ``uncond + scale * (cond - uncond)`` (Ho & Salimans 2022, eq. 6 written for logits).

    ``scale = 1`` gives the conditional logits, ``scale = 0`` the unconditional ones, ``scale > 1`` extrapolates
    away from the unconditional model.
    """
    return uncond + scale * (cond - uncond)


def filter_logits(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """Divide by ``temperature``, then keep the ``top_k`` largest logits and the smallest set whose probability
    reaches ``top_p``; the others become ``-inf``. Works on the last dimension of any shape."""
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be positive (use top_k=1 for greedy decoding)")
    logits = logits / temperature
    if top_k is not None and top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the tokens before it already reach top_p (the most likely token is always kept).
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_logits(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One categorical draw per row of ``logits`` (``(..., V)``) by the inverse CDF of ``softmax(logits)``."""
    probs = logits.float().softmax(-1)
    flat = probs.reshape(-1, probs.shape[-1])
    cdf = flat.cumsum(-1)
    dev = generator.device if generator is not None else flat.device
    u = torch.rand(flat.shape[0], 1, generator=generator, device=dev).to(flat.device) * cdf[:, -1:]
    idx = torch.searchsorted(cdf, u, right=True).clamp_max(flat.shape[-1] - 1)
    # Never return a token of probability 0 (possible only through rounding at the edge of the CDF). Always a
    # where, never `if bad.any():`, which would wait for the GPU once per sampled token.
    bad = flat.gather(-1, idx) == 0
    idx = torch.where(bad, flat.argmax(-1, keepdim=True), idx)
    return idx.reshape(probs.shape[:-1])


def token_accuracy(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Share of (masked) positions whose arg-max equals the target."""
    hit = (logits.argmax(-1) == targets).float()
    if mask is None:
        return hit.mean()
    return (hit * mask).sum() / mask.sum().clamp_min(1)
