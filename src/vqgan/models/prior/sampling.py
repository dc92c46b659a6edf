"""Sampling helpers shared by the priors: logit filtering (temperature, top-k, nucleus/top-p of Holtzman et
al. 2020), classifier-free guidance (Ho & Salimans 2022), the loss of a forward pass and seeded draws."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class PriorOutput:
    """Result of a prior's forward pass: ``logits`` ``(B, T, vocab_size)`` at the predicted positions and,
    with targets, the mean cross-entropy ``loss`` and ``accuracy`` (arg-max hits) over the scored ones."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    accuracy: torch.Tensor | None = None


def scored(logits: torch.Tensor, targets: torch.Tensor | None, mask: torch.Tensor | None) -> PriorOutput:
    """``logits`` and, given ``targets``, the cross-entropy and accuracy over ``mask`` (None: everywhere)."""
    if targets is None:
        return PriorOutput(logits)
    targets = targets.flatten(1)
    hit = (logits.detach().argmax(-1) == targets).float()
    if mask is None:
        return PriorOutput(logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten()), hit.mean())
    m = mask.flatten(1).float()
    ce = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    return PriorOutput(logits, (ce * m).sum() / m.sum().clamp_min(1), (hit * m).sum() / m.sum().clamp_min(1))


def draw(
    fn: Callable[..., torch.Tensor], shape: tuple[int, ...], generator: torch.Generator | None, device
) -> torch.Tensor:
    """``fn(shape)`` (``torch.rand``, ``torch.randn``) drawn on the generator's device, then on ``device``."""
    on = generator.device if generator is not None else device
    return fn(shape, generator=generator, device=on).to(device)


def classifier_free_guidance(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Guided logits ``uncond + scale * (cond - uncond)`` (Ho & Salimans 2022, eq. 6 written for logits):
    ``scale = 1`` gives the conditional logits, ``0`` the unconditional ones, ``> 1`` extrapolates."""
    return uncond + scale * (cond - uncond)


def guide(out: torch.Tensor, scale: float) -> torch.Tensor:
    """:func:`classifier_free_guidance` over a batch doubled as ``[conditional rows; null-class rows]``; at
    ``scale = 1`` (no doubled batch) ``out`` itself."""
    return out if scale == 1.0 else classifier_free_guidance(*out.chunk(2), scale)


def filter_logits(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """Divide by ``temperature``, then keep the ``top_k`` largest logits and the smallest set whose probability
    reaches ``top_p``; the others become ``-inf``. Works on the last dimension of any shape."""
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be positive (use top_k=1 for greedy decoding)")
    logits = logits / temperature
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the tokens before it already reach top_p (the most likely token is always kept).
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    return logits


def sample_logits(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One categorical draw per row of ``logits`` (``(..., V)``) by the inverse CDF of ``softmax(logits)``:
    one uniform number per row, so a generator state gives the same token whatever path computed the logits
    (with or without a KV cache), up to ties within floating-point rounding."""
    flat = logits.float().softmax(-1).reshape(-1, logits.shape[-1])
    cdf = flat.cumsum(-1)
    u = draw(torch.rand, (flat.shape[0], 1), generator, flat.device) * cdf[:, -1:]
    idx = torch.searchsorted(cdf, u, right=True).clamp_max(flat.shape[-1] - 1)
    # Never return a token of probability 0 (possible only through rounding at the edge of the CDF). Always a
    # where, never `if bad.any():`, which would wait for the GPU once per sampled token.
    idx = torch.where(flat.gather(-1, idx) == 0, flat.argmax(-1, keepdim=True), idx)
    return idx.reshape(logits.shape[:-1])
