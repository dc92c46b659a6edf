"""MaskGIT: a bidirectional transformer trained to predict masked code indices, decoded in a few parallel steps
(Chang et al. 2022, "MaskGIT: Masked Generative Image Transformer", https://arxiv.org/abs/2202.04200).

Training masks a random share ``gamma(r)`` of the tokens, ``r ~ U(0, 1)``, with the cosine schedule
``gamma(r) = cos(pi r / 2)`` (section 3.3), and scores only the masked positions. Decoding starts from an all-masked
map; at step ``t`` of ``T`` every masked token is sampled, and the ``ceil``-free count ``floor(N gamma((t+1)/T))``
of least confident new tokens is masked again (section 3.2, with the Gumbel-noised confidences of the reference
implementation, annealed to zero). Classes and classifier-free guidance work as for the GPT prior.

Clips: the mask covers the whole ``(T, h, w)`` grid (``PriorModelConfig.token_frames = T``). Frame prediction
fixes the codes of the first ``k`` latent frames and decodes only the future (MAGVIT, Yu et al. 2023, section 3.2);
``frame_prediction_prob`` trains on that pattern too.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vqgan.models.prior.config import PriorModelConfig
from vqgan.models.prior.sampling import (
    PriorOutput,
    classifier_free_guidance,
    filter_logits,
    sample_logits,
    token_accuracy,
)
from vqgan.models.prior.transformer import PriorBase, Transformer


def cosine_schedule(r: torch.Tensor | float) -> torch.Tensor:
    """Share of masked tokens ``cos(pi r / 2)`` at progress ``r`` in [0, 1] (1 at the start, 0 at the end)."""
    return torch.cos(torch.as_tensor(r, dtype=torch.float64) * math.pi / 2)


def masked_counts(num_tokens: int, steps: int) -> list[int]:
    """Number of tokens still masked after each of ``steps`` decoding steps: ``floor(N cos(pi/2 (t+1)/T))``,
    forced to fall by at least one per step (so no step is wasted) and to end at 0."""
    if not 1 <= steps <= num_tokens:
        raise ValueError(f"steps={steps} must be between 1 and the number of tokens {num_tokens}")
    counts, prev = [], num_tokens
    for t in range(steps):
        n = int(math.floor(num_tokens * float(cosine_schedule((t + 1) / steps)) + 1e-9))
        # Leave at least one token for each remaining step, and unmask at least one now.
        n = max(min(n, prev - 1), steps - 1 - t)
        counts.append(n)
        prev = n
    return counts


class MaskGITPrior(PriorBase):
    """Bidirectional transformer over ``[class, t_0, ..., t_{N-1}]`` where any ``t_i`` may be the mask token
    (index ``vocab_size``); outputs logits over the ``vocab_size`` codes at every map position."""

    def __init__(self, config: PriorModelConfig):
        super().__init__()
        self.config = config.validate()
        self.mask_token = config.vocab_size
        self.transformer = Transformer(
            config, causal=False, input_vocab=config.vocab_size + 1, max_len=config.num_tokens + 1
        )
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.init_weights()
        nn.init.normal_(self.head.weight, std=0.02)

    def forward(
        self,
        tokens: torch.Tensor,
        labels: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> PriorOutput:
        """Logits ``(B, N, vocab_size)`` of every position of a (partly masked) map ``tokens`` ``(B, N)``.

        With ``targets`` (and the boolean ``mask`` of positions to score; all when None), also the loss and the
        accuracy over those positions.
        """
        tokens = tokens.flatten(1)
        x = self.transformer.embed(tokens, self._labels(labels, tokens.shape[0], tokens.device), start=0)
        logits = self.head(self.transformer(x)[:, 1:])
        if targets is None:
            return PriorOutput(logits)
        targets = targets.flatten(1)
        m = torch.ones_like(targets, dtype=torch.bool) if mask is None else mask.flatten(1)
        ce = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        loss = (ce * m).sum() / m.sum().clamp_min(1)
        return PriorOutput(logits, loss, token_accuracy(logits.detach(), targets, m.float()))

    def random_mask(self, batch: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
        """Boolean ``(B, N)`` masks with ``ceil(M cos(pi r / 2))`` (at least one) random positions, ``r ~ U(0,1)``,
        among the ``M`` maskable ones: all ``N`` positions, or, for a share ``frame_prediction_prob`` of the
        clips, the positions from a random latent frame ``k`` in ``[1, T)`` on (the past stays visible)."""
        cfg = self.config
        n = cfg.num_tokens
        r = torch.rand(batch, generator=generator, device=device)
        first = torch.zeros(batch, dtype=torch.long, device=device)  # first maskable position of every row
        if cfg.frame_prediction_prob > 0 and cfg.token_frames > 1:
            u = torch.rand(batch, generator=generator, device=device)
            k = torch.randint(1, cfg.token_frames, (batch,), generator=generator, device=device)
            first = torch.where(u < cfg.frame_prediction_prob, k * cfg.frame_tokens, first)
        free = n - first
        count = torch.ceil(free * cosine_schedule(r).to(device)).long().clamp(min=1)
        count = torch.minimum(count, free)
        scores = torch.rand(batch, n, generator=generator, device=device)
        # Visible past positions get scores above every random one, so they are never among the lowest `count`.
        scores = scores.masked_fill(torch.arange(n, device=device)[None] < first[:, None], 2.0)
        ranks = scores.argsort(-1).argsort(-1)
        return ranks < count[:, None]

    def training_loss(
        self, tokens: torch.Tensor, labels: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> PriorOutput:
        """Cross-entropy on a random cosine-scheduled share of masked positions; labels dropped to the null class
        with probability ``cond_dropout`` in training mode."""
        tokens = tokens.flatten(1)
        b, dev = tokens.shape[0], tokens.device
        labels = self._labels(labels, b, dev)
        if self.training and self.config.cond_dropout > 0 and self.config.num_classes > 0:
            u = torch.rand(b, generator=generator, device=dev)
            labels = torch.where(u < self.config.cond_dropout, torch.full_like(labels, self.config.null_class), labels)
        mask = self.random_mask(b, dev, generator)
        inputs = tokens.masked_fill(mask, self.mask_token)
        return self(inputs, labels, targets=tokens, mask=mask)

    @torch.no_grad()
    def generate(
        self,
        num: int | None = None,
        labels: torch.Tensor | None = None,
        steps: int = 8,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        cfg_scale: float = 1.0,
        choice_temperature: float = 4.5,
        generator: torch.Generator | None = None,
        return_history: bool = False,
        prefix: torch.Tensor | None = None,
    ):
        """Decode token maps ``(B, token_height, token_width)`` (clips: ``(B, token_frames, token_height,
        token_width)``) in ``steps`` parallel steps.

        Args:
            num, labels, temperature, top_k, top_p, cfg_scale, generator: as in :meth:`GPTPrior.generate`.
            steps: decoding steps ``T`` (MaskGIT uses 8 to 12 for 16x16 maps); at most the number of tokens to
                generate (fewer are used when the prefix leaves fewer).
            choice_temperature: scale of the Gumbel noise added to the log-confidences when choosing which
                tokens to mask again, annealed linearly to 0 (4.5 in the reference implementation).
            return_history: also return the number of masked tokens after every step.
            prefix: given first tokens in raster order, ``(B, P)`` or the codes of the first ``k`` latent frames
                ``(B, k, h, w)`` (frame prediction): they are never masked, so only the future is decoded, and the
                schedule runs over the ``N - P`` tokens that remain.
        """
        cfg = self.config
        labels, prefix = self._generation_inputs(num, labels, prefix)
        b, n, device = labels.shape[0], cfg.num_tokens, labels.device
        guided = cfg_scale != 1.0
        all_labels = torch.cat([labels, torch.full_like(labels, cfg.null_class)]) if guided else labels
        tokens = torch.full((b, n), self.mask_token, dtype=torch.long, device=device)
        tokens[:, : prefix.shape[1]] = prefix
        history = []
        todo = n - prefix.shape[1]
        steps = min(steps, todo)
        for t, n_mask in enumerate(masked_counts(todo, steps)):
            unknown = tokens == self.mask_token
            logits = self(torch.cat([tokens, tokens]) if guided else tokens, all_labels).logits
            if guided:
                logits = classifier_free_guidance(logits[:b], logits[b:], cfg_scale)
            sampled = sample_logits(filter_logits(logits, temperature, top_k, top_p), generator)
            sampled = torch.where(unknown, sampled, tokens)
            # Confidence = the model's (guided, unfiltered) probability of the sampled token, as in MaskGIT.
            logp = logits.float().log_softmax(-1).gather(-1, sampled[..., None])[..., 0]
            anneal = choice_temperature * (1.0 - (t + 1) / steps)
            if anneal > 0:
                u = torch.rand(b, n, generator=generator, device=generator.device if generator else device)
                logp = logp + anneal * -torch.log(-torch.log(u.to(device).clamp(1e-20, 1.0 - 1e-7)))
            confidence = torch.where(unknown, logp, torch.full_like(logp, float("inf")))
            # Re-mask the n_mask least confident positions (known tokens have infinite confidence).
            if n_mask > 0:
                remask = confidence.argsort(-1)[:, :n_mask]
                sampled = sampled.scatter(-1, remask, self.mask_token)
            tokens = sampled
            if return_history:  # kept on the device; read back once at the end, not once per step
                history.append((tokens == self.mask_token).sum(-1).max())
        out = tokens.view(b, *cfg.token_shape)
        return (out, torch.stack(history).tolist()) if return_history else out
