"""A flow-matching prior over continuous tokenizer latents: rectified flow (Lipman et al. 2023,
https://arxiv.org/abs/2210.02747; Liu et al. 2023, https://arxiv.org/abs/2209.03003) with a small DiT (Peebles
& Xie 2023, https://arxiv.org/abs/2212.09748) as velocity network. A DiT, not a U-Net: the latent maps are
tiny (8x8 or 4x4), and it shares the GPT and MaskGIT layers, so priors of equal size differ in objective."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from einops import rearrange
from torch import nn

from vqgan.models.prior.config import PriorModelConfig
from vqgan.models.prior.sampling import draw, guide
from vqgan.models.prior.transformer import MLP, PriorBase, SelfAttention


@dataclass
class FlowOutput:
    """Result of :meth:`FlowPrior.training_loss`: predicted ``velocity`` ``(B, C, h, w)``, its mean squared
    error ``loss`` against ``x1 - x0``, and detached ``logs`` (``loss_t<0.5``, ``loss_t>=0.5``: per half)."""

    velocity: torch.Tensor
    loss: torch.Tensor
    logs: dict[str, torch.Tensor] = field(default_factory=dict)
    accuracy: torch.Tensor | None = None  # discrete priors report one; a flow has none


def sample_time(
    n: int, kind: Literal["uniform", "logit_normal"] = "uniform", mean: float = 0.0, std: float = 1.0,
    generator: torch.Generator | None = None, device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``n`` times in (0, 1): uniform, or ``sigmoid(N(mean, std))`` (logit-normal, Esser et al. 2024 section
    3.1, "Scaling Rectified Flow Transformers", which trains the middle of the path more)."""
    if kind == "uniform":
        return draw(torch.rand, (n,), generator, device)
    if kind == "logit_normal":
        return torch.sigmoid(mean + std * draw(torch.randn, (n,), generator, device))
    raise ValueError(f"time sampling {kind!r}; choose uniform or logit_normal")


def flow_matching_target(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The point ``x_t = (1 - t) x0 + t x1`` between noise ``x0`` and data ``x1`` at times ``t`` ``(B,)``, and
    the velocity ``x1 - x0`` regressed there (Liu et al. 2023 eq. 1; Lipman et al. 2023 eq. 23, sigma 0)."""
    tt = t.view(-1, *([1] * (x1.dim() - 1))).to(x1.dtype)
    return (1 - tt) * x0 + tt * x1, x1 - x0


def flow_matching_loss(
    velocity: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean squared error of ``velocity`` against ``x1 - x0``, and the loss on both halves of the path (early
    times are hard: almost pure noise; NaN for an empty half), by masked sums that read nothing back."""
    per_item = (velocity.float() - (x1 - x0).float()).pow(2).flatten(1).mean(1)
    nan, logs = per_item.new_tensor(float("nan")), {}
    for name, w in (("loss_t<0.5", (t < 0.5).float()), ("loss_t>=0.5", (t >= 0.5).float())):
        logs[name] = torch.where(w.sum() > 0, (per_item.detach() * w).sum() / w.sum().clamp_min(1), nan)
    return per_item.mean(), logs


def solve_ode(
    velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x0: torch.Tensor, steps: int,
    method: Literal["euler", "heun"] = "heun", return_trajectory: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """``x(1)`` (and with ``return_trajectory`` the ``steps + 1`` states) of ``dx/dt = velocity(x, t)`` from
    ``x(0) = x0``, ``steps`` equal steps: Euler or Heun (second order, for few steps; Karras et al. 2022)."""
    if steps < 1:
        raise ValueError(f"steps={steps} must be at least 1")
    if method not in ("euler", "heun"):
        raise ValueError(f"sampler {method!r}; choose euler or heun")
    x, trajectory = x0, [x0]
    for i in range(steps):
        # The time grid in Python floats: reading a device tensor would wait for the GPU at every step.
        t, t_next = i / steps, (i + 1) / steps
        tb = torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype)
        v = velocity(x, tb)
        if method == "heun":
            v = 0.5 * (v + velocity(x + (t_next - t) * v, torch.full_like(tb, t_next)))
        x = x + (t_next - t) * v
        if return_trajectory:
            trajectory.append(x)
    return (x, trajectory) if return_trajectory else x


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``(B, dim)`` (``dim`` even) of times in [0, 1], scaled by 1000 as the diffusion
    step indices DiT embeds (so the frequencies resolve small time differences)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def sincos_2d(height: int, width: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine positions ``(height * width, dim)`` (DiT, MAE), half the channels per axis."""
    if dim % 4:
        raise ValueError(f"n_embd={dim} must be divisible by 4 for 2-D sine-cosine positions")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    angles = [pos.reshape(-1, 1).double() * omega for pos in (rows, cols)]  # (h w, dim / 4) each
    return torch.cat([f(a) for a in angles for f in (torch.sin, torch.cos)], dim=1).float()


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class DiTBlock(nn.Module):
    """Pre-norm transformer block whose LayerNorms are modulated by the conditioning (adaLN-Zero, DiT section
    3.2): ``x + gate * attn(ln(x) * (1 + scale) + shift)``, then the same around the MLP; the gates start at 0."""

    def __init__(self, cfg: PriorModelConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.n_embd, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(cfg, causal=False, rope=None)
        self.norm2 = nn.LayerNorm(cfg.n_embd, elementwise_affine=False, eps=1e-6)
        self.mlp = MLP(cfg)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(cfg.n_embd, 6 * cfg.n_embd))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c)[:, None].chunk(6, dim=-1)
        x = x + gate1 * self.attn(_modulate(self.norm1(x), shift1, scale1))
        return x + gate2 * self.mlp(_modulate(self.norm2(x), shift2, scale2))


class FlowPrior(PriorBase):
    """A DiT predicting the flow-matching velocity of latents ``(B, C, h, w)`` at times ``t`` and a class."""

    def __init__(self, config: PriorModelConfig):
        super().__init__(config)
        cfg = self.config
        c, p, d = cfg.latent_channels, cfg.patch_size, cfg.n_embd
        self.patch_embed = nn.Conv2d(c, d, p, stride=p)
        pos = sincos_2d(cfg.token_height // p, cfg.token_width // p, d)
        self.register_buffer("pos_emb", pos[None], persistent=False)
        self.time_mlp = nn.Sequential(nn.Linear(256, d), nn.SiLU(), nn.Linear(d, d))
        self.cls_emb = nn.Embedding(cfg.num_classes + 1, d)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([DiTBlock(cfg) for _ in range(cfg.n_layer)])
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.head = nn.Linear(d, p * p * c)
        # Per-channel statistics of all training latents (set by the trainer), so samples come in their units.
        self.register_buffer("latent_mean", torch.zeros(c))
        self.register_buffer("latent_std", torch.ones(c))
        self.init_weights()

    def init_weights(self) -> None:
        """DiT's initialisation: Xavier-uniform linears, N(0, 0.02) class and time embeddings, zero adaLN
        regressions (every block starts as the identity) and a zero output layer."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patch_embed.weight.view(self.patch_embed.out_channels, -1))
        nn.init.zeros_(self.patch_embed.bias)
        for w in (self.cls_emb.weight, self.time_mlp[0].weight, self.time_mlp[2].weight):
            nn.init.normal_(w, std=0.02)
        for lin in (*(block.ada[-1] for block in self.blocks), self.ada_out[-1], self.head):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-channel mean and standard deviation ``(latent_channels,)`` of the training latents."""
        c = self.config.latent_channels
        if mean.shape != (c,) or std.shape != (c,):
            raise ValueError(f"statistics of shape {tuple(mean.shape)}, {tuple(std.shape)}; expected ({c},)")
        self.latent_mean.copy_(mean)
        self.latent_std.copy_(std.clamp_min(1e-6))

    def normalize(self, latents: torch.Tensor) -> torch.Tensor:
        return (latents - self.latent_mean[:, None, None]) / self.latent_std[:, None, None]

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.latent_std[:, None, None] + self.latent_mean[:, None, None]

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Velocity ``(B, C, h, w)`` at normalised latents ``x`` and times ``t`` ``(B,)``; ``labels`` ``(B,)``
        (``None`` or negative: the null class)."""
        cfg = self.config
        expected = (cfg.latent_channels, cfg.token_height, cfg.token_width)
        if tuple(x.shape[1:]) != expected:
            raise ValueError(f"latents of shape {tuple(x.shape[1:])}; this prior models {expected}")
        b = x.shape[0]
        c = self.time_mlp(timestep_embedding(t.expand(b) if t.dim() == 0 else t, 256).to(x.dtype))
        c = c + self.cls_emb(self._labels(labels, b, x.device))
        h = self.drop(self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_emb)
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.ada_out(c)[:, None].chunk(2, dim=-1)
        h = self.head(_modulate(self.norm_out(h), shift, scale))
        p = cfg.patch_size
        return rearrange(h, "b (hh ww) (p q c) -> b c (hh p) (ww q)", hh=cfg.token_height // p, p=p, q=p)

    def velocity(
        self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None, cfg_scale: float = 1.0
    ) -> torch.Tensor:
        """Velocity with classifier-free guidance ``v_null + s (v_cond - v_null)`` (Ho & Salimans 2022,
        applied to the velocity as in SD3); ``cfg_scale = 1`` is the conditional model alone, in one pass."""
        if cfg_scale == 1.0:
            return self(x, t, labels)
        labels = self._labels(labels, x.shape[0], x.device)
        null = torch.full_like(labels, self.config.null_class)
        return guide(self(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null])), cfg_scale)

    def training_loss(
        self, latents: torch.Tensor, labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
        t: torch.Tensor | None = None,
    ) -> FlowOutput:
        """Flow-matching loss of raw (un-normalised) ``latents`` ``(B, C, h, w)``, labels dropped with
        ``cond_dropout`` in training; ``noise`` and ``t`` may be given."""
        cfg = self.config
        x1 = self.normalize(latents.float())
        b, dev = x1.shape[0], x1.device
        labels = self._train_labels(labels, b, dev, generator)
        noise = draw(torch.randn, x1.shape, generator, dev) if noise is None else noise
        if t is None:
            t = sample_time(b, cfg.time_sampling, cfg.logit_mean, cfg.logit_std, generator, dev)
        v = self(flow_matching_target(noise, x1, t)[0], t, labels)
        return FlowOutput(v, *flow_matching_loss(v, noise, x1, t))

    @torch.no_grad()
    def generate(
        self, num: int | None = None, labels: torch.Tensor | None = None, steps: int | None = None,
        sampler: Literal["euler", "heun"] | None = None, cfg_scale: float | None = None,
        generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
        return_trajectory: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Latents ``(B, C, h, w)`` in the tokenizer's units from noise (or ``noise``) by the guided flow,
        ``num`` unconditional or one per class of ``labels``; ``None`` arguments default to the config's."""
        cfg = self.config
        device, dtype = next(self.parameters()).device, next(self.parameters()).dtype
        if labels is None and num is None and noise is None:
            raise ValueError("give num (unconditional), labels (class-conditional) or noise")
        b = labels.shape[0] if labels is not None else num if noise is None else noise.shape[0]
        labels = self._labels(labels, b, device)
        if noise is None:
            shape = (b, cfg.latent_channels, cfg.token_height, cfg.token_width)
            noise = draw(torch.randn, shape, generator, device)
        scale = cfg.guidance if cfg_scale is None else cfg_scale
        out = solve_ode(lambda x, t: self.velocity(x, t, labels, scale), noise.to(device=device, dtype=dtype),
                        steps or cfg.sample_steps, sampler or cfg.sampler, return_trajectory)
        if not return_trajectory:
            return self.denormalize(out)
        return self.denormalize(out[0]), [self.denormalize(x) for x in out[1]]
