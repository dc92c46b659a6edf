"""An autoregressive GPT prior over code indices in raster order, as the stage-2 transformer of Esser et al.
2021 ("Taming Transformers", https://arxiv.org/abs/2012.09841) and LlamaGen (Sun et al. 2024), in nanoGPT's
style. The class is a prefix token; the "null" class serves unlabelled data and classifier-free guidance
(Ho & Salimans 2022). Clips are ``(T, h, w)`` grids in raster order over time, then space; frame prediction
generates after a ``prefix``, the codes of the first ``k`` latent frames (a causal tokenizer computes them
from those frames alone, MAGVIT-v2).
"""

from __future__ import annotations

import torch

from vqgan.models.prior.config import PriorModelConfig
from vqgan.models.prior.sampling import PriorOutput, filter_logits, guide, sample_logits, scored
from vqgan.models.prior.transformer import KVCache, TokenPrior


class GPTPrior(TokenPrior):
    """Causal transformer over ``[class, t_0, ..., t_{N-1}]``; the output at position ``i`` predicts ``t_i``."""

    def __init__(self, config: PriorModelConfig):
        super().__init__(config, causal=True, input_vocab=config.vocab_size, max_len=config.num_tokens)

    def forward(
        self, tokens: torch.Tensor, labels: torch.Tensor | None = None, targets: torch.Tensor | None = None
    ) -> PriorOutput:
        """Logits ``(B, t + 1, vocab_size)`` of the next token after the class prefix and every token of
        ``tokens`` ``(B, t)`` (a ``(B, h, w)`` map or ``(B, T, h, w)`` clip is flattened in raster order),
        ``t < N``. ``labels`` ``(B,)``: ``None`` or negative values mean the null class. With ``targets``
        ``(B, t + 1)`` (usually the full map, ``tokens = targets[:, :-1]``), also the loss and accuracy."""
        return scored(self.head(self._hidden(tokens, labels)), targets)

    def training_loss(
        self, tokens: torch.Tensor, labels: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> PriorOutput:
        """Next-token cross-entropy over the whole map; labels dropped to the null class with probability
        ``cond_dropout`` in training mode."""
        tokens = tokens.flatten(1)
        labels = self._train_labels(labels, tokens.shape[0], tokens.device, generator)
        return self(tokens[:, :-1], labels, targets=tokens)

    @torch.no_grad()
    def generate(
        self, num: int | None = None, labels: torch.Tensor | None = None, temperature: float = 1.0,
        top_k: int | None = None, top_p: float | None = None, cfg_scale: float = 1.0, use_cache: bool = True,
        generator: torch.Generator | None = None, prefix: torch.Tensor | None = None,
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
            prefix: given first tokens in raster order, ``(B, P)`` or the codes of the first ``k`` latent
                frames ``(B, k, h, w)`` (frame prediction), copied to the output unchanged.
        """
        cfg = self.config
        labels, out = self._generation_inputs(num, labels, prefix, cfg_scale)
        copies, p = labels.shape[0] // out.shape[0], out.shape[1]  # 2 copies with guidance (null-class rows)
        cache = None
        if use_cache:
            dtype = next(self.parameters()).dtype
            cache = KVCache.empty(cfg, labels.shape[0], cfg.num_tokens, labels.device, dtype)
        last = out  # tokens not yet fed to the cache (the whole prefix at first, then the previous sample)
        for i in range(p, cfg.num_tokens):
            # Without the cache every pass reads [class, all tokens]; with it, the first reads [class, prefix]
            # and every later one the last token alone, at sequence index i.
            whole = cache is None or i == p
            rows = (out if cache is None else last).repeat(copies, 1)
            x = self.transformer.embed(rows, labels if whole else None, start=0 if whole else i)
            logits = guide(self.head(self.transformer(x, cache)[:, -1]), cfg_scale)
            last = sample_logits(filter_logits(logits, temperature, top_k, top_p), generator)[:, None]
            out = torch.cat([out, last], dim=1)
        return out.view(out.shape[0], *cfg.token_shape)
