"""An autoregressive GPT prior over code indices in raster order, as the stage-2 transformer of Esser et al.
2021 ("Taming Transformers", https://arxiv.org/abs/2012.09841) and LlamaGen (Sun et al. 2024), nanoGPT-style;
frame prediction over clips continues the first latent frames' codes (causal tokenizers, MAGVIT-v2)."""

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
        """Logits ``(B, t + 1, vocab_size)`` of the next token after the class and every token of ``tokens``
        (``(B, t)``, ``t < N``, or maps and clips flattened in raster order); ``labels`` ``(B,)`` (``None`` or
        negative: the null class). With ``targets`` ``(B, t + 1)`` (often the full map), loss and accuracy."""
        return scored(self.head(self._hidden(tokens, labels)), targets, mask=None)

    def training_loss(
        self, tokens: torch.Tensor, labels: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> PriorOutput:
        """Next-token cross-entropy over the whole map (labels dropped with ``cond_dropout`` in training)."""
        tokens = tokens.flatten(1)
        labels = self._train_labels(labels, tokens.shape[0], tokens.device, generator)
        return self(tokens[:, :-1], labels, targets=tokens)

    @torch.no_grad()
    def generate(
        self, num: int | None = None, labels: torch.Tensor | None = None, temperature: float = 1.0,
        top_k: int | None = None, top_p: float | None = None, cfg_scale: float = 1.0, use_cache: bool = True,
        generator: torch.Generator | None = None, prefix: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Sample token maps ``(B, h, w)`` (clips: ``(B, T, h, w)``), ``num`` unconditional ones or one per
        class of ``labels`` ``(B,)``, after ``prefix`` (first tokens ``(B, P)`` in raster order, or the codes
        ``(B, k, h, w)`` of the first ``k`` latent frames), copied unchanged. ``cfg_scale``: classifier-free
        guidance (``1``: none); ``use_cache`` reuses past keys and values (same tokens, faster)."""
        cfg, n = self.config, self.config.num_tokens
        labels, out = self._generation_inputs(num, labels, prefix, cfg_scale)
        copies, p = len(labels) // len(out), out.shape[1]  # 2 copies with guidance (the null-class rows)
        cache = KVCache.empty(cfg, len(labels), n, out.device, self.head.weight.dtype) if use_cache else None
        last = out  # tokens not yet fed to the cache (the whole prefix at first, then the previous sample)
        for i in range(p, n):
            # Without the cache every pass reads [class, all tokens]; with it, the first reads [class, prefix]
            # and every later one the last token alone, at sequence index i.
            whole = cache is None or i == p
            rows = (out if cache is None else last).repeat(copies, 1)
            x = self.transformer.embed(rows, labels if whole else None, start=0 if whole else i)
            logits = guide(self.head(self.transformer(x, cache)[:, -1]), cfg_scale)
            last = sample_logits(filter_logits(logits, temperature, top_k, top_p), generator)[:, None]
            out = torch.cat([out, last], dim=1)
        return out.view(out.shape[0], *cfg.token_shape)
