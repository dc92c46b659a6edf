"""The stage-1 autoencoder: encoder -> quantizer -> decoder. ``arch="taming"`` follows Esser et al. 2021
(https://arxiv.org/abs/2012.09841) with taming-transformers' module names, so its checkpoints map one to one;
its causal 3D version serves ``arch="video3d"``. ``arch="resnet"`` is van den Oord et al. 2017's VQ-VAE."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from itertools import pairwise
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from vqgan.config import ModelConfig
from vqgan.layers import AttnBlock, Downsample, ResnetBlock, Upsample, conv3d, group_norm
from vqgan.models.outputs import EncodeOutput, VQModelOutput
from vqgan.quantizers import Quantizer, build_quantizer


class _Layers(NamedTuple):
    """What taming's encoder and decoder are built of: 2D layers, or causal 3D ones for video."""

    conv: Callable[[int, int], nn.Module]  # 3x3 (causal 3x3x3) convolution that keeps the size
    block: type[nn.Module]  # residual block (c_in, c_out, dropout, groups)
    attn: type[nn.Module]  # spatial self-attention (channels, groups)
    norm: Callable[[int, int], nn.Module]  # (channels, groups)
    temporal_attn: type[nn.Module] | None


_LAYERS = {  # by ``video``
    False: _Layers(partial(nn.Conv2d, kernel_size=3, padding=1), ResnetBlock, AttnBlock, group_norm, None),
    True: _Layers(conv3d.CausalConv3d, conv3d.ResBlock3d, conv3d.SpatialAttention3d, conv3d.FrameGroupNorm,
                  conv3d.TemporalAttention),
}


def _temporal_levels(cfg: ModelConfig) -> list[bool]:
    """Which downsampling steps also halve time: the last ``temporal_downsample`` (as in MAGVIT-v2)."""
    n = len(cfg.ch_mult) - 1
    if cfg.temporal_downsample > n:
        raise ValueError(f"model.temporal_downsample={cfg.temporal_downsample} exceeds the {n} downsampling "
                         f"steps of model.ch_mult={cfg.ch_mult}")
    return [i >= n - cfg.temporal_downsample for i in range(n)]


def _mid(cfg: ModelConfig, layers: _Layers, ch: int) -> nn.Sequential:
    """The middle block: residual block, self-attention, (video) causal temporal attention, residual block."""
    g, temporal = cfg.num_groups, layers.temporal_attn is not None and cfg.temporal_attention
    return nn.Sequential(OrderedDict(
        block_1=layers.block(ch, ch, cfg.dropout, g),
        attn_1=layers.attn(ch, g) if cfg.mid_attention else nn.Identity(),
        temporal_attn=layers.temporal_attn(ch, g) if temporal else nn.Identity(),
        block_2=layers.block(ch, ch, cfg.dropout, g),
    ))


class _Level(nn.Module):
    """One resolution level: ``n`` residual blocks to ``c_out`` channels, each followed by attention when
    ``res`` is in ``attn_resolutions``, then any resampling layer added after them (taming's ``downsample`` /
    ``upsample``, or ``resample`` in 3D)."""

    def __init__(self, cfg: ModelConfig, layers: _Layers, c_in: int, c_out: int, n: int, res: int):
        super().__init__()
        blocks, attn = [], []
        for j in range(n):
            blocks.append(layers.block(c_out if j else c_in, c_out, cfg.dropout, cfg.num_groups))
            if res in cfg.attn_resolutions:
                attn.append(layers.attn(c_out, cfg.num_groups))
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attn)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        for resample in list(self.children())[2:]:
            h = resample(h)
        return h


class _Coder(nn.Module):
    """``conv_in``, :meth:`stages` (recomputed in backward with ``gradient_checkpointing``), ``conv_out``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for stage in self.stages():
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                h = checkpoint(stage, h, use_reentrant=False)
            else:
                h = stage(h)
        return self.conv_out(F.silu(self.norm_out(h), inplace=not torch.is_grad_enabled()))


class Encoder(_Coder):
    """taming's encoder: ``conv_in``, one level per ``ch_mult`` entry, a middle block, ``conv_out``. With
    ``video=True``, causal 3D: ``(B, C, T, H, W) -> (B, z_channels, 1 + (T - 1) / s, H / f, W / f)``."""

    def __init__(self, cfg: ModelConfig, video: bool = False):
        super().__init__()
        layers, temporal = _LAYERS[video], _temporal_levels(cfg) if video else None
        block_in, res = cfg.ch, cfg.resolution
        self.gradient_checkpointing = cfg.gradient_checkpointing
        self.conv_in = layers.conv(cfg.in_channels, block_in)
        self.down = nn.ModuleList()
        for i, mult in enumerate(cfg.ch_mult):
            level = _Level(cfg, layers, block_in, cfg.ch * mult, cfg.num_res_blocks, res)
            block_in = cfg.ch * mult
            if i != len(cfg.ch_mult) - 1:
                if video:
                    level.resample = conv3d.Downsample3d(block_in, temporal[i])
                else:
                    level.downsample = Downsample(block_in)
                res //= 2
            self.down.append(level)
        self.mid = _mid(cfg, layers, block_in)
        self.norm_out = layers.norm(block_in, cfg.num_groups)
        self.conv_out = layers.conv(block_in, cfg.z_channels)

    def stages(self) -> list[nn.Module]:
        return [*self.down, self.mid]


class Decoder(_Coder):
    """taming's decoder with ``num_res_blocks + 1`` blocks per level (``video=True``: causal 3D): the mirror
    of :class:`Encoder`, or of its own widths (``decoder_ch``, ``decoder_ch_mult``; seed 004), where every
    upsampling conv also narrows to the next level's width (the mirror keeps taming's layers, checkpoints)."""

    def __init__(self, cfg: ModelConfig, video: bool = False):
        super().__init__()
        layers, temporal = _LAYERS[video], _temporal_levels(cfg) if video else None
        widths, narrow = cfg.decoder_widths, not cfg.decoder_mirrors_encoder
        block_in, res = widths[-1], cfg.latent_resolution
        self.gradient_checkpointing = cfg.gradient_checkpointing
        self.conv_in = layers.conv(cfg.z_channels, block_in)
        self.mid = _mid(cfg, layers, block_in)
        up: list[nn.Module] = []
        for i in reversed(range(len(widths))):
            level = _Level(cfg, layers, block_in, widths[i], cfg.num_res_blocks + 1, res)
            block_in = widths[i]
            if i != 0:
                out = widths[i - 1] if narrow else block_in
                if video:
                    level.resample = conv3d.Upsample3d(block_in, temporal[i - 1])
                else:
                    level.upsample = Upsample(block_in, cfg.upsample, out)
                block_in, res = out, res * 2
            up.append(level)
        # taming stores the levels in encoder order (``up.0`` at full resolution), video in decoding order.
        self.video = video
        self.up = nn.ModuleList(up if video else up[::-1])
        self.norm_out = layers.norm(block_in, cfg.num_groups)
        self.conv_out = layers.conv(block_in, cfg.out_channels or cfg.in_channels)

    @property
    def last_layer(self) -> torch.Tensor:
        return getattr(self.conv_out, "conv", self.conv_out).weight

    def stages(self) -> list[nn.Module]:
        return [self.mid, *(self.up if self.video else reversed(self.up))]


class _Residual(nn.Module):
    """VQ-VAE residual unit: ``x + conv1x1(relu(conv3x3(relu(x))))``."""

    def __init__(self, ch: int, hidden: int):
        super().__init__()
        self.block = nn.Sequential(nn.ReLU(), nn.Conv2d(ch, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, ch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class ResNetEncoder(nn.Module):
    """VQ-VAE encoder (van den Oord et al. 2017): 4x4 stride-2 convs, a 3x3 conv, residual stack."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        n_down, ch = len(cfg.ch_mult) - 1, cfg.ch
        widths = [cfg.in_channels] + [ch // 2] * (n_down - 1) + [ch] * min(n_down, 1)
        layers: list[nn.Module] = []
        for c_in, c_out in pairwise(widths):
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU()]
        layers.append(nn.Conv2d(widths[-1], ch, 3, padding=1))
        layers += [_Residual(ch, max(ch // 4, 8)) for _ in range(cfg.num_res_blocks)]
        self.net = nn.Sequential(*layers, nn.ReLU(), nn.Conv2d(ch, cfg.z_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ResNetDecoder(nn.Module):
    """VQ-VAE decoder: a 3x3 conv, residual stack, 4x4 stride-2 transposed convs. Its width is ``decoder_ch``
    (``None``: the encoder's ``ch``); only the length of ``decoder_ch_mult`` matters (the number of upsamplings)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        n_up, ch = len(cfg.ch_mult) - 1, cfg.ch if cfg.decoder_ch is None else cfg.decoder_ch
        out = cfg.out_channels or cfg.in_channels
        layers: list[nn.Module] = [nn.Conv2d(cfg.z_channels, ch, 3, padding=1)]
        layers += [_Residual(ch, max(ch // 4, 8)) for _ in range(cfg.num_res_blocks)]
        widths = [ch] + [ch // 2] * (n_up - 1) + [out] * min(n_up, 1)
        for c_in, c_out in pairwise(widths):
            layers += [nn.ReLU(), nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1)]
        if n_up == 0:
            layers += [nn.ReLU(), nn.Conv2d(ch, out, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    @property
    def last_layer(self) -> torch.Tensor:
        return self.net[-1].weight

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class BaseVQModel(nn.Module):
    """Every tokenizer's plumbing: encoder -> 1x1 ``quant_conv`` -> quantizer -> 1x1 ``post_quant_conv`` ->
    decoder (``conv``: 2D or 3D); subclasses may override :meth:`_prepare_input` and :meth:`_match_input`.
    ``decode_codes(encode(x).indices)`` equals ``forward(x).reconstruction`` in eval mode."""

    def __init__(self, config: ModelConfig, encoder: nn.Module, decoder: nn.Module, conv: type = nn.Conv2d):
        super().__init__()
        self.config = config
        self.encoder, self.decoder = encoder, decoder
        self.quant_conv = conv(config.z_channels, config.embed_dim, 1)
        self.quantize: Quantizer = build_quantizer(config.quantizer, config.embed_dim)
        self.post_quant_conv = conv(config.embed_dim, config.z_channels, 1)

    def _prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _match_input(self, reconstruction: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return reconstruction

    @property
    def last_layer(self) -> torch.Tensor:
        """Weight of the decoder's last layer, used by the adaptive GAN weight."""
        return self.decoder.last_layer

    def encode_latents(self, x: torch.Tensor) -> torch.Tensor:
        """Continuous latents before quantization, ``(B, embed_dim, *latent_shape)``."""
        return self.quant_conv(self.encoder(self._prepare_input(x)))

    def encode(self, x: torch.Tensor) -> EncodeOutput:
        """Encode inputs in [-1, 1] to latents, quantized latents and code indices ``(B, *latent_shape)``."""
        latents = self.encode_latents(x)
        q = self.quantize(latents)
        return EncodeOutput(latents=latents, quantized=q.quantized, indices=q.indices)

    def decode(self, quantized: torch.Tensor) -> torch.Tensor:
        """Decode quantized latents ``(B, embed_dim, *latent_shape)`` to images or clips (squashed into (-1, 1), the
        data range, when ``output_activation="tanh"``)."""
        out = self.decoder(self.post_quant_conv(quantized))
        return torch.tanh(out) if self.config.output_activation == "tanh" else out

    def decode_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Decode code indices (as returned by :meth:`encode`)."""
        return self.decode(self.quantize.indices_to_codes(indices))

    def compile(self, *args, **kwargs) -> None:
        """``torch.compile`` in place (eager's state-dict keys), the decoder's last layer left eager: the
        adaptive GAN weight's two ``retain_graph=True`` gradients there fail in a compiled backward."""
        last = next(m for m in self.decoder.modules() if getattr(m, "weight", None) is self.last_layer)
        last.forward = torch.compiler.disable(last.forward)
        super().compile(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> VQModelOutput:
        latents = self.encode_latents(x)
        q = self.quantize(latents)
        rec = self._match_input(self.decode(q.quantized), x)
        return VQModelOutput(rec, q.quantized, q.indices, latents, q.loss, q.losses, q.stats)

    def save_pretrained(self, directory: str) -> None:
        """Write ``config.json`` and ``model.safetensors`` to ``directory`` (loadable without training code)."""
        from vqgan.models.pretrained import save_pretrained

        save_pretrained(self, directory)


class VQModel(BaseVQModel):
    """The image tokenizer: taming's encoder/decoder (``arch="taming"``) or the residual VQ-VAE's
    (``arch="resnet"``) around a quantizer, with 2D 1x1 ``quant_conv`` / ``post_quant_conv``."""

    def __init__(self, config: ModelConfig):
        if config.arch == "taming":
            super().__init__(config, Encoder(config), Decoder(config))
        else:
            super().__init__(config, ResNetEncoder(config), ResNetDecoder(config))
