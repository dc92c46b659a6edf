"""MaskGIT (Chang et al. 2022, https://arxiv.org/abs/2202.04200): a bidirectional transformer predicting
masked codes, decoded in a few parallel steps. Over clips, frame prediction fixes the first ``k`` latent
frames and decodes the rest (MAGVIT, Yu et al. 2023, section 3.2); ``frame_prediction_prob`` trains on it."""

from __future__ import annotations

import math

import torch

from vqgan.models.prior.config import PriorModelConfig
from vqgan.models.prior.sampling import PriorOutput, draw, filter_logits, guide, sample_logits, scored
from vqgan.models.prior.transformer import TokenPrior


def cosine_schedule(r: torch.Tensor | float) -> torch.Tensor:
    """Share of masked tokens ``cos(pi r / 2)`` at progress ``r`` in [0, 1] (1 at the start, 0 at the end)."""
    return torch.cos(torch.as_tensor(r, dtype=torch.float64) * math.pi / 2)


def masked_counts(num_tokens: int, steps: int) -> list[int]:
    """Number of tokens still masked after each of ``steps`` decoding steps: ``floor(N cos(pi/2 (t+1)/T))``,
    forced to fall by at least one per step (so no step is wasted) and to end at 0."""
    if not 1 <= steps <= num_tokens:
        raise ValueError(f"steps={steps} must be between 1 and the number of tokens {num_tokens}")
    counts = [num_tokens]
    for t in range(steps):
        n = int(math.floor(num_tokens * float(cosine_schedule((t + 1) / steps)) + 1e-9))
        # Leave at least one token for each remaining step, and unmask at least one now.
        counts.append(max(min(n, counts[-1] - 1), steps - 1 - t))
    return counts[1:]


class MaskGITPrior(TokenPrior):
    """Bidirectional transformer over ``[class, t_0, ..., t_{N-1}]`` where any ``t_i`` may be the mask token
    (index ``vocab_size``); outputs logits over the ``vocab_size`` codes at every map position."""

    def __init__(self, config: PriorModelConfig):
        super().__init__(
            config, causal=False, input_vocab=config.vocab_size + 1, max_len=config.num_tokens + 1)
        self.mask_token = config.vocab_size

    def forward(
        self, tokens: torch.Tensor, labels: torch.Tensor | None = None, targets: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> PriorOutput:
        """Logits ``(B, N, vocab_size)`` at every position of a partly masked map ``tokens`` ``(B, N)``; with
        ``targets``, also loss and accuracy where the boolean ``mask`` is set (everywhere without one)."""
        return scored(self.head(self._hidden(tokens, labels)[:, 1:]), targets, mask)

    def random_mask(self, batch: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
        """Boolean ``(B, N)`` masks of ``ceil(M cos(pi r / 2))`` (at least one; ``r ~ U(0,1)``, section 3.3)
        random positions among the ``M`` maskable ones: all, or, for a share ``frame_prediction_prob`` of the
        clips, those from a random latent frame ``k`` in ``[1, T)`` on (the past stays visible)."""
        cfg, n = self.config, self.config.num_tokens
        r = torch.rand(batch, generator=generator, device=device)
        first = torch.zeros(batch, dtype=torch.long, device=device)  # first maskable position of every row
        if cfg.frame_prediction_prob > 0 and cfg.token_frames > 1:
            u = torch.rand(batch, generator=generator, device=device)
            k = torch.randint(1, cfg.token_frames, (batch,), generator=generator, device=device)
            first = torch.where(u < cfg.frame_prediction_prob, k * cfg.frame_tokens, first)
        free = n - first
        count = torch.minimum(torch.ceil(free * cosine_schedule(r).to(device)).long().clamp(min=1), free)
        # Visible past positions score above every random one, so they are never among the lowest `count`.
        scores = torch.rand(batch, n, generator=generator, device=device)
        scores = scores.masked_fill(torch.arange(n, device=device)[None] < first[:, None], 2.0)
        return scores.argsort(-1).argsort(-1) < count[:, None]

    def training_loss(
        self, tokens: torch.Tensor, labels: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> PriorOutput:
        """Cross-entropy on a cosine-scheduled random share of masked positions (labels as in the GPT's)."""
        tokens = tokens.flatten(1)
        labels = self._train_labels(labels, len(tokens), tokens.device, generator)
        mask = self.random_mask(len(tokens), tokens.device, generator)
        return self(tokens.masked_fill(mask, self.mask_token), labels, targets=tokens, mask=mask)

    @torch.no_grad()
    def generate(
        self, num: int | None = None, labels: torch.Tensor | None = None, steps: int = 8,
        temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
        cfg_scale: float = 1.0, choice_temperature: float = 4.5, generator: torch.Generator | None = None,
        return_history: bool = False, prefix: torch.Tensor | None = None,
    ):
        """Decode token maps as :meth:`GPTPrior.generate` in ``steps`` (8 to 12 for 16x16 maps; at most the
        ``N - P`` after the never masked ``prefix``), each sampling every masked token and masking the least
        confident again (section 3.2), with Gumbel noise scaled by ``choice_temperature`` (4.5 in the
        reference) and annealed to 0. ``return_history`` also returns the masked count after each step."""
        labels, prefix = self._generation_inputs(num, labels, prefix, cfg_scale)
        b, n, device = len(prefix), self.config.num_tokens, labels.device
        todo, history = n - prefix.shape[1], []
        tokens = torch.cat([prefix, prefix.new_full((b, todo), self.mask_token)], dim=1)
        steps = min(steps, todo)
        for t, n_mask in enumerate(masked_counts(todo, steps)):
            unknown = tokens == self.mask_token
            logits = guide(self(tokens.repeat(len(labels) // b, 1), labels).logits, cfg_scale)
            sampled = sample_logits(filter_logits(logits, temperature, top_k, top_p), generator)
            tokens = torch.where(unknown, sampled, tokens)
            # Confidence = the model's (guided, unfiltered) probability of the sampled token, as in MaskGIT.
            logp = logits.float().log_softmax(-1).gather(-1, tokens[..., None])[..., 0]
            anneal = choice_temperature * (1.0 - (t + 1) / steps)
            if anneal > 0:
                u = draw(torch.rand, (b, n), generator, device).clamp(1e-20, 1.0 - 1e-7)
                logp = logp + anneal * -torch.log(-torch.log(u))
            # Re-mask the n_mask least confident positions (known tokens have infinite confidence).
            if n_mask > 0:
                remask = logp.masked_fill(~unknown, float("inf")).argsort(-1)[:, :n_mask]
                tokens = tokens.scatter(-1, remask, self.mask_token)
            if return_history:  # kept on the device; read back once at the end, not once per step
                history.append((tokens == self.mask_token).sum(-1).max())
        out = tokens.view(b, *self.config.token_shape)
        return (out, torch.stack(history).tolist()) if return_history else out
