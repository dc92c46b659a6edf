"""An autoregressive GPT prior over code indices in raster order, as the stage-2 transformer of Esser et al. 2021
("Taming Transformers", https://arxiv.org/abs/2012.09841) and LlamaGen (Sun et al. 2024), written in the style of
nanoGPT: the whole model in one file, configured by a dataclass, with ``generate`` on the model.

Class conditioning is a prefix token (LlamaGen); the extra "null" class serves unlabelled data and classifier-free
guidance (Ho & Salimans 2022): the label is dropped to the null class with probability ``cond_dropout`` during
training, and sampling mixes conditional and unconditional logits. Sampling supports temperature, top-k, top-p and
a key/value cache (one new token per forward pass instead of the whole prefix).

Clips: the codes of a video tokenizer form a ``(T, h, w)`` grid (``PriorModelConfig.token_frames = T``), modelled
in raster order over time, then space, with RoPE per axis (see :mod:`vqgan.models.prior.transformer`). Frame
prediction is generation after a ``prefix``: the codes of the first ``k`` latent frames, which a causal tokenizer
computes from the first frames alone (MAGVIT-v2), go through the transformer in one pass and the rest is sampled.
"""

from __future__ import annotations

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
from vqgan.models.prior.transformer import KVCache, PriorBase, Transformer


class GPTPrior(PriorBase):
    """Causal transformer over ``[class, t_0, ..., t_{N-1}]``; the output at position ``i`` predicts ``t_i``."""

    def __init__(self, config: PriorModelConfig):
        super().__init__()
        self.config = config.validate()
        self.transformer = Transformer(config, causal=True, input_vocab=config.vocab_size, max_len=config.num_tokens)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.init_weights()
        nn.init.normal_(self.head.weight, std=0.02)

    def forward(
        self, tokens: torch.Tensor, labels: torch.Tensor | None = None, targets: torch.Tensor | None = None
    ) -> PriorOutput:
        """Logits of the next token after the class prefix and every token of ``tokens``.

        Args:
            tokens: ``(B, t)`` code indices (any ``(B, h, w)`` map or ``(B, T, h, w)`` clip is flattened in raster
                order: time, then rows, then columns), ``t < N``.
            labels: ``(B,)`` class indices; ``None`` or negative values mean the null class.
            targets: ``(B, t + 1)`` tokens to score (usually the full map, with ``tokens = targets[:, :-1]``).

        Returns:
            :class:`PriorOutput` with ``logits`` ``(B, t + 1, vocab_size)`` and, with targets, loss and accuracy.
        """
        tokens = tokens.flatten(1)
        b = tokens.shape[0]
        x = self.transformer.embed(tokens, self._labels(labels, b, tokens.device), start=0)
        logits = self.head(self.transformer(x))
        if targets is None:
            return PriorOutput(logits)
        targets = targets.flatten(1)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return PriorOutput(logits, loss, token_accuracy(logits.detach(), targets))

    def training_loss(
        self, tokens: torch.Tensor, labels: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> PriorOutput:
        """Next-token cross-entropy over the whole map, with labels dropped to the null class with probability
        ``cond_dropout`` (in training mode) so that the same model also learns the unconditional distribution."""
        tokens = tokens.flatten(1)
        labels = self._labels(labels, tokens.shape[0], tokens.device)
        if self.training and self.config.cond_dropout > 0 and self.config.num_classes > 0:
            u = torch.rand(labels.shape, generator=generator, device=labels.device)
            labels = torch.where(u < self.config.cond_dropout, torch.full_like(labels, self.config.null_class), labels)
        return self(tokens[:, :-1], labels, targets=tokens)

    @torch.no_grad()
    def generate(
        self,
        num: int | None = None,
        labels: torch.Tensor | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        cfg_scale: float = 1.0,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
        prefix: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Sample token maps ``(B, token_height, token_width)`` (clips: ``(B, token_frames, token_height,
        token_width)``).

        Args:
            num: number of maps (when ``labels`` is None: unconditional samples).
            labels: ``(B,)`` classes to condition on.
            temperature, top_k, top_p: see :func:`~vqgan.models.prior.sampling.filter_logits`.
            cfg_scale: classifier-free guidance scale; ``1`` samples the conditional model without guidance.
            use_cache: reuse keys and values of past positions (same tokens, much faster for long maps).
            generator: random generator, for reproducible samples.
            prefix: given first tokens in raster order, ``(B, P)`` or the codes of the first ``k`` latent frames
                ``(B, k, h, w)`` (frame prediction: the causal video tokenizer makes them independent of the
                frames that follow). They are copied to the output unchanged; with the cache they are encoded in
                one pass, then the rest is sampled token by token.
        """
        cfg = self.config
        labels, out = self._generation_inputs(num, labels, prefix)
        b, device = labels.shape[0], labels.device
        guided = cfg_scale != 1.0
        if guided:  # one batch: conditional rows, then the same rows with the null class
            labels = torch.cat([labels, torch.full_like(labels, cfg.null_class)])
        n, p = cfg.num_tokens, out.shape[1]
        cache = None
        if use_cache:
            dtype = next(self.parameters()).dtype
            cache = KVCache.empty(cfg, labels.shape[0], n, device, dtype)
        last = out  # tokens not yet fed to the cache (the whole prefix at first, then the previous sample)
        for i in range(p, n):
            if use_cache:
                rows = torch.cat([last, last]) if guided else last
                # The first pass holds [class, prefix]; later passes one token, which sits at sequence index i.
                x = self.transformer.embed(rows, labels if i == p else None, start=0 if i == p else i)
                h = self.transformer(x, cache)[:, -1]
            else:
                seq = torch.cat([out, out]) if guided else out
                h = self.transformer(self.transformer.embed(seq, labels, start=0))[:, -1]
            logits = self.head(h)
            if guided:
                logits = classifier_free_guidance(logits[:b], logits[b:], cfg_scale)
            nxt = sample_logits(filter_logits(logits, temperature, top_k, top_p), generator)
            out = torch.cat([out, nxt[:, None]], dim=1)
            last = nxt[:, None]
        return out.view(b, *cfg.token_shape)
