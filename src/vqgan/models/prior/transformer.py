"""The priors' transformer: pre-norm blocks (GPT-2, nanoGPT), ``F.scaled_dot_product_attention``, rotary
positions (Su et al. 2021, "RoFormer", https://arxiv.org/abs/2104.09864) and a key/value cache."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vqgan.models.prior.config import PriorModelConfig
from vqgan.models.prior.sampling import draw


def rope_sections(pairs: int, axes: int) -> list[int]:
    """How many of a head's ``pairs`` frequency pairs each axis gets: all for one axis; for ``(t, y, x)`` the two
    spatial axes get ``3/8`` each and time the rest (16/24/24 of 64 pairs, the split of Qwen2-VL's M-RoPE)."""
    if axes == 1:
        return [pairs]
    if axes != 3 or pairs < 3:
        raise ValueError(f"3D RoPE needs at least 3 frequency pairs per head, got {pairs}")
    s = max(1, 3 * pairs // 8)
    return [pairs - 2 * s, s, s]


def grid_positions(frames: int, height: int, width: int) -> torch.Tensor:
    """``(1 + T h w, 3)`` integer ``(t, y, x)`` coordinates of ``[class, tokens in raster order]``: the class
    token at the origin (as position 0 in 1D), token ``(t, y, x)`` at ``(t + 1, y + 1, x + 1)``."""
    grid = torch.stack(torch.meshgrid(*map(torch.arange, (frames, height, width)), indexing="ij"), dim=-1)
    return torch.cat([torch.zeros(1, 3, dtype=grid.dtype), grid.reshape(-1, 3) + 1])


class RotaryEmbedding(nn.Module):
    """Rotary position embedding ("rotate half"; RoFormer eq. 34) at ``positions`` ``(L, A)`` on ``A`` axes
    (default: ``0 .. max_len - 1``), which split the frequency pairs (:func:`rope_sections`; 3D RoPE)."""

    def __init__(self, head_dim: int, max_len: int, base: float = 10000.0, positions: torch.Tensor | None = None):
        super().__init__()
        pos = torch.arange(max_len)[:, None] if positions is None else positions[:max_len]
        if pos.shape[0] < max_len:
            raise ValueError(f"{pos.shape[0]} positions given for a sequence of {max_len}")
        sections = rope_sections(head_dim // 2, pos.shape[1])
        inv_freqs = [1.0 / (base ** (torch.arange(n, dtype=torch.float64) / n)) for n in sections]
        freqs = [torch.outer(pos[:, axis].double(), inv_freq) for axis, inv_freq in enumerate(inv_freqs)]
        emb = torch.cat(freqs + freqs, dim=-1)  # (L, D): the (L, D/2) angles twice
        self.register_buffer("cos", emb.cos().float(), persistent=False)
        self.register_buffer("sin", emb.sin().float(), persistent=False)

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Rotate ``x`` of shape ``(B, H, T, D)`` whose first position is ``start``."""
        cos, sin = (table[start : start + x.shape[-2]].to(x.dtype) for table in (self.cos, self.sin))
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin


@dataclass
class KVCache:
    """Pre-allocated keys and values of every layer, ``(L, B, H, T_max, D)``, filled up to ``length``."""

    k: torch.Tensor
    v: torch.Tensor
    length: int = 0

    @classmethod
    def empty(cls, cfg: PriorModelConfig, batch: int, max_len: int, device, dtype) -> KVCache:
        shape = (cfg.n_layer, batch, cfg.n_head, max_len, cfg.n_embd // cfg.n_head)
        return cls(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))


class SelfAttention(nn.Module):
    """Multi-head self-attention; causal or bidirectional; optionally reading/writing a :class:`KVCache`."""

    def __init__(self, cfg: PriorModelConfig, causal: bool, rope: RotaryEmbedding | None):
        super().__init__()
        self.n_head, self.causal, self.rope, self.dropout = cfg.n_head, causal, rope, cfg.dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (y.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for y in (q, k, v))
        start = cache.length if cache is not None else 0
        if self.rope is not None:
            q, k = self.rope(q, start), self.rope(k, start)
        mask, is_causal = None, self.causal and t > 1
        if cache is not None:
            cache.k[layer, :, :, start : start + t], cache.v[layer, :, :, start : start + t] = k, v
            k, v = cache.k[layer, :, :, : start + t], cache.v[layer, :, :, : start + t]
            if is_causal and start > 0:
                # New query i (absolute position start + i) sees keys 0 .. start + i.
                mask = torch.ones(t, start + t, dtype=torch.bool, device=x.device).tril(diagonal=start)
                is_causal = False
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop, is_causal=is_causal)
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(b, t, c)))


class MLP(nn.Module):
    def __init__(self, cfg: PriorModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, cfg.mlp_ratio * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.mlp_ratio * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, cfg: PriorModelConfig, causal: bool, rope: RotaryEmbedding | None):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = SelfAttention(cfg, causal, rope)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """Token + class embeddings, positions (learned or rotary), a stack of :class:`Block`, final LayerNorm;
    the blocks see ``[class, t_0, ..., t_{n-1}]``, the class (or null class) a prefix token as in LlamaGen."""

    def __init__(self, cfg: PriorModelConfig, causal: bool, input_vocab: int, max_len: int):
        super().__init__()
        self.cfg, self.max_len = cfg, max_len
        self.tok_emb = nn.Embedding(input_vocab, cfg.n_embd)
        self.cls_emb = nn.Embedding(cfg.num_classes + 1, cfg.n_embd)
        # Images keep 1D positions over the raster sequence; clips get (t, y, x) coordinates.
        grid = grid_positions(*cfg.token_shape) if cfg.rope and cfg.token_frames > 1 else None
        rope = RotaryEmbedding(cfg.n_embd // cfg.n_head, max_len, cfg.rope_base, grid) if cfg.rope else None
        self.pos_emb = None if cfg.rope else nn.Parameter(torch.zeros(1, max_len, cfg.n_embd))
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg, causal, rope) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)

    def init_weights(self) -> None:
        """GPT-2 initialisation: N(0, 0.02), residual projections scaled by ``1/sqrt(2 * n_layer)``."""
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif "ln" in name:
                nn.init.ones_(p)
            else:
                residual = name.endswith("proj.weight")
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * self.cfg.n_layer) if residual else 0.02)

    def embed(self, tokens: torch.Tensor, labels: torch.Tensor | None, start: int) -> torch.Tensor:
        """Embeddings of ``[class, tokens]`` (given ``labels``), or of ``tokens`` alone at ``start`` on."""
        x = self.tok_emb(tokens)
        if labels is not None:
            x = torch.cat([self.cls_emb(labels)[:, None], x], dim=1)
        if self.pos_emb is not None:
            x = x + self.pos_emb[:, start : start + x.shape[1]]
        return self.drop(x)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        if cache is not None and cache.length + x.shape[1] > self.max_len:
            raise ValueError(f"sequence of {cache.length + x.shape[1]} exceeds the block size {self.max_len}")
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
        if cache is not None:
            cache.length += x.shape[1]
        return self.ln_f(x)


class PriorBase(nn.Module):
    """What the priors share: a validated config and class labels with the null class."""

    def __init__(self, config: PriorModelConfig):
        super().__init__()
        self.config = config.validate()

    def _labels(self, labels: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        if labels is None:
            return torch.full((batch,), self.config.null_class, dtype=torch.long, device=device)
        labels = labels.to(device=device, dtype=torch.long)
        return labels.masked_fill(labels < 0, self.config.null_class)  # negative: unlabelled data

    def _train_labels(
        self, labels: torch.Tensor | None, batch: int, device: torch.device, generator: torch.Generator | None
    ) -> torch.Tensor:
        """Labels dropped to the null class with probability ``cond_dropout`` in training (for guidance)."""
        cfg, labels = self.config, self._labels(labels, batch, device)
        if self.training and cfg.cond_dropout > 0 and cfg.num_classes > 0:
            dropped = draw(torch.rand, (batch,), generator, device) < cfg.cond_dropout
            labels = labels.masked_fill(dropped, cfg.null_class)
        return labels


class TokenPrior(PriorBase):
    """A transformer over ``[class, tokens]`` with a linear head over the codes (GPT and MaskGIT priors)."""

    def __init__(self, config: PriorModelConfig, causal: bool, input_vocab: int, max_len: int):
        super().__init__(config)
        self.transformer = Transformer(config, causal, input_vocab, max_len)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.init_weights()
        nn.init.normal_(self.head.weight, std=0.02)

    def _hidden(self, tokens: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Final hidden states ``(B, 1 + t, n_embd)`` of ``[class, tokens]`` (``tokens`` flattened)."""
        tokens = tokens.flatten(1)
        x = self.transformer.embed(tokens, self._labels(labels, tokens.shape[0], tokens.device), start=0)
        return self.transformer(x)

    def _generation_inputs(
        self, num: int | None, labels: torch.Tensor | None, prefix: torch.Tensor | None, cfg_scale: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Labels of ``generate``'s forward passes (null when unconditional; then as many null labels when
        guided) and the prefix as flat tokens ``(B, P)`` (``P = 0`` without one), ``B`` from any argument."""
        n, vocab, device = self.config.num_tokens, self.config.vocab_size, next(self.parameters()).device
        if prefix is not None:
            prefix = prefix.to(device=device, dtype=torch.long).flatten(1)
            if prefix.shape[1] >= n:
                raise ValueError(f"a prefix of {prefix.shape[1]} tokens leaves nothing to generate of {n}")
            if prefix.numel() and (int(prefix.min()) < 0 or int(prefix.max()) >= vocab):
                raise ValueError(f"prefix tokens must be code indices in [0, {vocab})")
        batch = labels.shape[0] if labels is not None else prefix.shape[0] if prefix is not None else num
        if batch is None:
            raise ValueError("give num (unconditional), labels (class-conditional) or a prefix")
        if prefix is not None and prefix.shape[0] != batch:
            raise ValueError(f"{prefix.shape[0]} prefixes for a batch of {batch}")
        labels = self._labels(labels, batch, device)
        if cfg_scale != 1.0:
            labels = torch.cat([labels, torch.full_like(labels, self.config.null_class)])
        return labels, torch.empty(batch, 0, dtype=torch.long, device=device) if prefix is None else prefix
