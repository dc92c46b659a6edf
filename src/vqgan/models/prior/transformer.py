"""The transformer shared by both priors: pre-norm blocks (LayerNorm before attention and MLP, as GPT-2 and
nanoGPT), attention through ``F.scaled_dot_product_attention`` (fused kernels where available), optional rotary
position embeddings (Su et al. 2021, "RoFormer", https://arxiv.org/abs/2104.09864) and a key/value cache for
autoregressive decoding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vqgan.models.prior.config import PriorModelConfig


class RotaryEmbedding(nn.Module):
    """Rotary position embedding: rotates pairs of query/key channels by position-dependent angles, so that the
    attention score depends on relative positions only (RoFormer eq. 34). Uses the "rotate half" layout."""

    def __init__(self, head_dim: int, max_len: int, base: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        t = torch.arange(max_len, dtype=torch.float64)
        freqs = torch.outer(t, inv_freq)  # (T, D/2)
        emb = torch.cat([freqs, freqs], dim=-1)
        self.register_buffer("cos", emb.cos().float(), persistent=False)
        self.register_buffer("sin", emb.sin().float(), persistent=False)

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Rotate ``x`` of shape ``(B, H, T, D)`` whose first position is ``start``."""
        t = x.shape[-2]
        cos, sin = self.cos[start : start + t].to(x.dtype), self.sin[start : start + t].to(x.dtype)
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
        hd = cfg.n_embd // cfg.n_head
        shape = (cfg.n_layer, batch, cfg.n_head, max_len, hd)
        return cls(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))


class SelfAttention(nn.Module):
    """Multi-head self-attention; causal or bidirectional; optionally reading/writing a :class:`KVCache`."""

    def __init__(self, cfg: PriorModelConfig, causal: bool, rope: RotaryEmbedding | None):
        super().__init__()
        self.n_head, self.causal, self.rope = cfg.n_head, causal, rope
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout
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
            cache.k[layer, :, :, start : start + t] = k
            cache.v[layer, :, :, start : start + t] = v
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
    """Token + class embeddings, positions (learned or rotary), a stack of :class:`Block`, final LayerNorm.

    The sequence seen by the blocks is ``[class token, token_0, ..., token_{n-1}]``: the class (or the null class)
    is a prefix token, as in LlamaGen's class-conditional GPT, so both priors condition the same way.
    """

    def __init__(self, cfg: PriorModelConfig, causal: bool, input_vocab: int, max_len: int):
        super().__init__()
        self.cfg, self.max_len = cfg, max_len
        self.tok_emb = nn.Embedding(input_vocab, cfg.n_embd)
        self.cls_emb = nn.Embedding(cfg.num_classes + 1, cfg.n_embd)
        rope = RotaryEmbedding(cfg.n_embd // cfg.n_head, max_len, cfg.rope_base) if cfg.rope else None
        self.pos_emb = None if cfg.rope else nn.Parameter(torch.zeros(1, max_len, cfg.n_embd))
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg, causal, rope) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.rope = rope

    def init_weights(self) -> None:
        """GPT-2 initialisation: N(0, 0.02), residual projections scaled by ``1/sqrt(2 * n_layer)``."""
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif "ln" in name:
                nn.init.ones_(p)
            elif name.endswith("proj.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * self.cfg.n_layer))
            else:
                nn.init.normal_(p, std=0.02)

    def embed(self, tokens: torch.Tensor, labels: torch.Tensor | None, start: int) -> torch.Tensor:
        """Embeddings of ``[class, tokens]`` (``labels`` given, sequence starts at 0) or of ``tokens`` alone
        placed at absolute position ``start``."""
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
    """What the GPT and MaskGIT priors share: class labels with the null class."""

    config: PriorModelConfig

    def _labels(self, labels: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        null = torch.full((batch,), self.config.null_class, dtype=torch.long, device=device)
        if labels is None:
            return null
        labels = labels.to(device=device, dtype=torch.long)
        # Negative labels (unlabelled data) map to the null class.
        return torch.where(labels < 0, null, labels)
