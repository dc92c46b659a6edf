"""The stage-1 autoencoder: encoder -> quantizer -> decoder.

``arch="taming"`` follows Esser et al. 2021, "Taming Transformers for High-Resolution Image Synthesis"
(https://arxiv.org/abs/2012.09841); module names match taming-transformers' so its checkpoints map one to one.
``arch="resnet"`` is the residual VQ-VAE of van den Oord et al. 2017 used by seed 003.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from vqgan.config import ModelConfig
from vqgan.layers import AttnBlock, Downsample, ResnetBlock, Upsample, group_norm
from vqgan.models.outputs import EncodeOutput, VQModelOutput
from vqgan.quantizers import Quantizer, build_quantizer


def _maybe_checkpoint(enabled: bool, module: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """``module(h)``, recomputed in the backward pass instead of stored when ``enabled`` and training."""
    if enabled and module.training and torch.is_grad_enabled():
        return checkpoint(module, h, use_reentrant=False)
    return module(h)


class _Mid(nn.Module):
    def __init__(self, ch: int, dropout: float, groups: int, attention: bool):
        super().__init__()
        self.block_1 = ResnetBlock(ch, ch, dropout, groups)
        self.attn_1 = AttnBlock(ch, groups) if attention else nn.Identity()
        self.block_2 = ResnetBlock(ch, ch, dropout, groups)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class _Level(nn.Module):
    """One resolution level: residual blocks, each optionally followed by attention, then resampling."""

    def __init__(self, blocks: list[ResnetBlock], attn: list[nn.Module]):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attn)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        return h


class Encoder(nn.Module):
    """taming's encoder: ``conv_in``, one level per ``ch_mult`` entry, a middle block, ``conv_out``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        ch, groups, res = cfg.ch, cfg.num_groups, cfg.resolution
        self.gradient_checkpointing = cfg.gradient_checkpointing
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
        in_mult = (1, *cfg.ch_mult)
        self.down = nn.ModuleList()
        for i, mult in enumerate(cfg.ch_mult):
            block_in, block_out = ch * in_mult[i], ch * mult
            blocks, attn = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out, cfg.dropout, groups))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    attn.append(AttnBlock(block_in, groups))
            level = _Level(blocks, attn)
            if i != len(cfg.ch_mult) - 1:
                level.downsample = Downsample(block_in)
                res //= 2
            self.down.append(level)
        self.mid = _Mid(block_in, cfg.dropout, groups, cfg.mid_attention)
        self.norm_out = group_norm(block_in, groups)
        self.conv_out = nn.Conv2d(block_in, cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ckpt = self.gradient_checkpointing
        h = self.conv_in(x)
        for level in self.down:
            h = _maybe_checkpoint(ckpt, level, h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = _maybe_checkpoint(ckpt, self.mid, h)
        return self.conv_out(F.silu(self.norm_out(h), inplace=not torch.is_grad_enabled()))


class Decoder(nn.Module):
    """taming's decoder with ``num_res_blocks + 1`` blocks per level: the mirror of :class:`Encoder` by default, or
    of its own widths (``decoder_ch``, ``decoder_ch_mult``; seed 004's 128 -> 64 -> 32 -> 16 decoder behind a
    128-256-512-1024 encoder). With its own widths every upsampling conv also narrows to the next level's width,
    so that no conv at a resolution is wider than that resolution's width; the mirror keeps taming's layers (its
    upsampling convs keep the width), so taming checkpoints still load."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        groups = cfg.num_groups
        widths = cfg.decoder_widths
        narrow = not cfg.decoder_mirrors_encoder
        block_in = widths[-1]
        res = cfg.latent_resolution
        self.gradient_checkpointing = cfg.gradient_checkpointing
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, padding=1)
        self.mid = _Mid(block_in, cfg.dropout, groups, cfg.mid_attention)
        up: list[nn.Module] = []
        for i in reversed(range(len(widths))):
            block_out = widths[i]
            blocks, attn = [], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out, cfg.dropout, groups))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    attn.append(AttnBlock(block_in, groups))
            level = _Level(blocks, attn)
            if i != 0:
                out = widths[i - 1] if narrow else block_in
                level.upsample = Upsample(block_in, cfg.upsample, out)
                block_in = out
                res *= 2
            up.insert(0, level)  # stored in encoder order, as taming does
        self.up = nn.ModuleList(up)
        self.norm_out = group_norm(block_in, groups)
        self.conv_out = nn.Conv2d(block_in, cfg.out_channels or cfg.in_channels, 3, padding=1)

    @property
    def last_layer(self) -> torch.Tensor:
        return self.conv_out.weight

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        ckpt = self.gradient_checkpointing
        h = _maybe_checkpoint(ckpt, self.mid, self.conv_in(z))
        for level in reversed(self.up):
            h = _maybe_checkpoint(ckpt, level, h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h), inplace=not torch.is_grad_enabled()))


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
        layers: list[nn.Module] = []
        c_in = cfg.in_channels
        for i in range(n_down):
            c_out = ch // 2 if i < n_down - 1 else ch
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU()]
            c_in = c_out
        layers.append(nn.Conv2d(c_in, ch, 3, padding=1))
        layers += [_Residual(ch, max(ch // 4, 8)) for _ in range(cfg.num_res_blocks)]
        layers += [nn.ReLU(), nn.Conv2d(ch, cfg.z_channels, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ResNetDecoder(nn.Module):
    """VQ-VAE decoder: a 3x3 conv, residual stack, 4x4 stride-2 transposed convs. Its width is ``decoder_ch``
    (``None``: the encoder's ``ch``); only the length of ``decoder_ch_mult`` matters (the number of upsamplings)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        n_up, ch = len(cfg.ch_mult) - 1, cfg.ch if cfg.decoder_ch is None else cfg.decoder_ch
        layers: list[nn.Module] = [nn.Conv2d(cfg.z_channels, ch, 3, padding=1)]
        layers += [_Residual(ch, max(ch // 4, 8)) for _ in range(cfg.num_res_blocks)]
        layers.append(nn.ReLU())
        c_in = ch
        out = cfg.out_channels or cfg.in_channels
        for i in range(n_up):
            last = i == n_up - 1
            c_out = out if last else ch // 2
            layers.append(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1))
            if not last:
                layers.append(nn.ReLU())
            c_in = c_out
        if n_up == 0:
            layers.append(nn.Conv2d(ch, out, 3, padding=1))
        self.net = nn.Sequential(*layers)

    @property
    def last_layer(self) -> torch.Tensor:
        return self.net[-1].weight

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class BaseVQModel(nn.Module):
    """The plumbing every tokenizer shares: encoder -> 1x1 ``quant_conv`` -> quantizer -> 1x1 ``post_quant_conv``
    -> decoder. Subclasses build those five parts (2D for images, 3D for video) and may override
    :meth:`_prepare_input` (check or reshape the input) and :meth:`_match_input` (give the reconstruction the
    input's shape).

    ``decode_codes(encode(x).indices)`` equals ``forward(x).reconstruction`` in eval mode.
    """

    config: ModelConfig
    encoder: nn.Module
    decoder: nn.Module
    quant_conv: nn.Module
    quantize: Quantizer
    post_quant_conv: nn.Module

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
        """``torch.compile`` in place (:meth:`torch.nn.Module.compile`: the same module, and the same state-dict keys
        as eager, so checkpoints of compiled and eager runs are interchangeable), with the decoder's last layer left
        eager.

        taming's adaptive GAN weight takes two gradients at that layer with ``retain_graph=True``
        (``train/step.py``). A compiled backward refuses to be retained ("compiled with non-empty donated
        buffers") and would run in full for each of them; with the last layer eager, autograd reaches its weight
        without entering the compiled graph, and each costs one weight gradient of one convolution.
        """
        last = next(m for m in self.decoder.modules() if getattr(m, "weight", None) is self.last_layer)
        last.forward = torch.compiler.disable(last.forward)
        super().compile(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> VQModelOutput:
        latents = self.encode_latents(x)
        q = self.quantize(latents)
        rec = self._match_input(self.decode(q.quantized), x)
        return VQModelOutput(rec, q.quantized, q.indices, latents, q.loss, q.losses, q.stats)

    # -- our own folder format ------------------------------------------------------------------------------
    def save_pretrained(self, directory: str) -> None:
        """Write ``config.json`` and ``model.safetensors`` to ``directory`` (loadable without training code)."""
        from vqgan.models.pretrained import save_pretrained

        save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, directory: str, map_location: str = "cpu") -> nn.Module:
        """Load a folder written by :meth:`save_pretrained` (the class is the one its config names)."""
        from vqgan.models.pretrained import from_pretrained

        return from_pretrained(directory, map_location)


class VQModel(BaseVQModel):
    """The image tokenizer: taming's encoder/decoder (``arch="taming"``) or the residual VQ-VAE's
    (``arch="resnet"``) around a quantizer, with 2D 1x1 ``quant_conv`` / ``post_quant_conv``.

    ``decode_codes(encode(x).indices)`` equals ``forward(x).reconstruction`` in eval mode.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        if config.arch == "taming":
            self.encoder, self.decoder = Encoder(config), Decoder(config)
        else:
            self.encoder, self.decoder = ResNetEncoder(config), ResNetDecoder(config)
        self.quant_conv = nn.Conv2d(config.z_channels, config.embed_dim, 1)
        self.quantize: Quantizer = build_quantizer(config.quantizer, config.embed_dim)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)
