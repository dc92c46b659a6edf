"""Named presets: full experiment configurations registered by name (as timm's ``register_model`` or
LlamaGen's ``VQ_models``), with a tiny ``test-*`` preset for every architecture.

>>> from vqgan.registry import create_model, list_presets
>>> model = create_model("test-taming")
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from vqgan.config import (
    DataConfig,
    DiscriminatorConfig,
    ExperimentConfig,
    LossConfig,
    ModelConfig,
    QuantizerConfig,
    TrainConfig,
)

_PRESETS: dict[str, Callable[[], ExperimentConfig]] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register_preset(name: str, description: str = "") -> Callable:
    """Decorator registering ``fn() -> ExperimentConfig`` under ``name``."""

    def wrap(fn: Callable[[], ExperimentConfig]) -> Callable[[], ExperimentConfig]:
        if name in _PRESETS:
            raise ValueError(f"preset {name!r} is already registered")
        _PRESETS[name] = fn
        _DESCRIPTIONS[name] = description or (fn.__doc__ or "").strip().split("\n")[0]
        return fn

    return wrap


def get_preset(name: str) -> ExperimentConfig:
    """A fresh copy of the preset's :class:`ExperimentConfig`."""
    if name not in _PRESETS:
        raise KeyError(f"unknown preset {name!r}; available: {', '.join(list_presets())}")
    cfg = copy.deepcopy(_PRESETS[name]())
    cfg.name = name
    return cfg


def list_presets(prefix: str = "") -> list[str]:
    return sorted(n for n in _PRESETS if n.startswith(prefix))


def describe_presets() -> dict[str, str]:
    return {n: _DESCRIPTIONS[n] for n in list_presets()}


def create_model(name: str, **model_overrides):
    """Build the autoencoder of preset ``name``; keyword arguments override :class:`ModelConfig` fields."""
    from vqgan.models import build_model

    cfg = get_preset(name).model
    for k, v in model_overrides.items():
        if not hasattr(cfg, k):
            raise TypeError(f"ModelConfig has no field {k!r}")
        setattr(cfg, k, v)
    return build_model(cfg)


# -- tiny presets for tests ---------------------------------------------------------------------------------
def _tiny_train() -> TrainConfig:
    return TrainConfig(max_steps=2, val_every_n_steps=2, log_every_n_steps=1, diagnostics_every_n_steps=1)


@register_preset("test-taming", "tiny taming-style VQGAN for tests (16x16, 8 channels, 32 codes)")
def _test_taming() -> ExperimentConfig:
    return ExperimentConfig(
        model=ModelConfig(
            resolution=16, ch=8, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[8], z_channels=8,
            embed_dim=8, num_groups=4, quantizer=QuantizerConfig(kind="ema", codebook_size=32, dead_code_threshold=0.01),
        ),
        loss=LossConfig(perceptual="lpips", random_backbone=True, disc_start=1, disc_weight=0.8),
        discriminator=DiscriminatorConfig(n_layers=2, ch=8),
        data=DataConfig(resolution=16, batch_size=4, builtin_train_crops=32, val_size=8),
        train=_tiny_train(),
    )


@register_preset("test-resnet", "tiny residual VQ-VAE for tests (16x16, 16 channels, 32 codes)")
def _test_resnet() -> ExperimentConfig:
    return ExperimentConfig(
        model=ModelConfig(
            arch="resnet", resolution=16, ch=16, ch_mult=[1, 1, 1], num_res_blocks=2, z_channels=8, embed_dim=8,
            quantizer=QuantizerConfig(kind="vq", codebook_size=32, kmeans_init=False, dead_code_threshold=0.0),
        ),
        loss=LossConfig(reconstruction="l2", perceptual="none", disc_weight=0.0),
        data=DataConfig(resolution=16, batch_size=4, builtin_train_crops=32, val_size=8),
        train=_tiny_train(),
    )


# -- the quick-start model of the demo ----------------------------------------------------------------------
@register_preset("quickstart", "demo tokenizer: 32x32 built-in crops to 8x8 tokens, 1024 codes, 5 CPU minutes")
def _quickstart() -> ExperimentConfig:
    # Sized for two CPU cores: a narrow taming model (ch 32, f4) sees more images in the time budget than a wider
    # one, and the L2 objective is the one PSNR measures. A cosine decay of the
    # learning rate gains about 1 dB over a constant rate at 700 steps. 2100 steps take about 4.3 minutes on two
    # idle cores (23.2 dB; 1800 steps gave 22.9 dB); training stops after 4.75 minutes in any case.
    return ExperimentConfig(
        model=ModelConfig(
            resolution=32, ch=32, ch_mult=[1, 2, 2], num_res_blocks=1, attn_resolutions=[], mid_attention=True,
            z_channels=32, embed_dim=32, num_groups=16,
            quantizer=QuantizerConfig(kind="ema", codebook_size=1024, codebook_dim=None),
        ),
        loss=LossConfig(reconstruction="l2", perceptual="none", disc_weight=0.0),
        data=DataConfig(kind="builtin", resolution=32, batch_size=16, builtin_scale=1.0, builtin_hue=0.5),
        train=TrainConfig(
            max_steps=2100, max_time_minutes=4.75, lr=2e-3, betas=[0.9, 0.99], val_every_n_steps=350, warmup_steps=50,
            lr_schedule="cosine",
        ),
    )


# -- one preset per seed system -----------------------------------------------------------------------------
@register_preset("seed000-ucf101-vqgan", "seed 000: UCF101 frames, hidden_dims 64-128-256-512, latent 32, 512 codes")
def _seed000() -> ExperimentConfig:
    return ExperimentConfig(
        model=ModelConfig(
            resolution=64, ch=64, ch_mult=[1, 2, 4, 8], num_res_blocks=1, attn_resolutions=[8], z_channels=32,
            embed_dim=32, upsample="transposed", downsample_factor=8,
            quantizer=QuantizerConfig(kind="ema", codebook_size=512, beta=0.25),
        ),
        loss=LossConfig(
            reconstruction="l2", perceptual="lpips", perceptual_weight=0.1, disc_weight=0.1, adaptive_weight=False,
            # The discriminator follows seed 000's per-chunk schedule (data.gan_epochs_per_chunk), not a step count.
            disc_start=0,
        ),
        discriminator=DiscriminatorConfig(n_layers=3, ch=64, norm="none", spectral_norm=True),
        # Seed 000's schedule: per chunk of videos, epochs_per_batch=10 reconstruction passes then
        # gan_epochs_per_batch=5 GAN passes; the whole pass over the chunks num_epoch=3 times. The seed does not state
        # its chunk size; 500 videos (~19 chunks of UCF101's split-1 training list) fits a 64 GB host.
        data=DataConfig(kind="ucf101", resolution=64, batch_size=64, frames=1, frames_as_images=True, crop="center",
                        videos_per_chunk=500, epochs_per_chunk=10, gan_epochs_per_chunk=5),
        train=TrainConfig(max_epochs=3, lr=2e-4),
    )


@register_preset("seed001-taming-f16-1024", "seeds 001/002: taming VQGAN f16, 1024 codes, FFHQ 256")
def _seed001() -> ExperimentConfig:
    return ExperimentConfig(
        model=ModelConfig(
            resolution=256, ch=128, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2, attn_resolutions=[16], z_channels=256,
            embed_dim=256, dropout=0.0,
            quantizer=QuantizerConfig(kind="vq", codebook_size=1024, beta=0.25, kmeans_init=False, dead_code_threshold=0.0),
        ),
        loss=LossConfig(reconstruction="l1", perceptual="lpips", perceptual_weight=1.0, disc_weight=0.8, disc_start=30001),
        discriminator=DiscriminatorConfig(n_layers=3, ch=64, norm="batch"),
        data=DataConfig(kind="folder", root="data/ffhq", resolution=256, batch_size=8, crop="center", flip=True),
        train=TrainConfig(max_steps=400000, lr=4.5e-6 * 8, val_every_n_steps=5000, warmup_steps=0),
    )


@register_preset("seed003-celeba-vqvae", "seed 003: CelebA 128 residual VQ-VAE, 512x128 codes, lr 2.25e-4")
def _seed003() -> ExperimentConfig:
    return ExperimentConfig(
        model=ModelConfig(
            arch="resnet", resolution=128, ch=256, ch_mult=[1, 1, 1], num_res_blocks=4, z_channels=128, embed_dim=128,
            upsample="transposed",
            # The seed's "refined loss": weight 1 on the encoder term, 0.25 on the codebook term.
            quantizer=QuantizerConfig(
                kind="vq", codebook_size=512, beta=0.25, beta_on="codebook", kmeans_init=False, dead_code_threshold=0.0
            ),
        ),
        loss=LossConfig(reconstruction="l2", perceptual="none", disc_weight=0.0),
        data=DataConfig(kind="folder", root="data/celeba/img_align_celeba", resolution=128, batch_size=64, crop="center", flip=False),
        train=TrainConfig(max_steps=100000, lr=2.25e-4, betas=[0.9, 0.999], grad_clip=None),
    )


def _seed004_model() -> ModelConfig:
    # Encoder 128-256-512-1024 (64 -> 8), light decoder 128-64-32-16 (8 -> 64) with a tanh output, attention at 8x8;
    # the seed's VQ loss is codebook + 0.1 * commitment: a gradient-learned codebook without EMA, k-means or restarts.
    return ModelConfig(
        resolution=64, ch=128, ch_mult=[1, 2, 4, 8], num_res_blocks=1, attn_resolutions=[8], z_channels=256,
        embed_dim=256, decoder_ch=16, decoder_ch_mult=[1, 2, 4, 8], output_activation="tanh",
        quantizer=QuantizerConfig(kind="vq", codebook_size=1024, beta=0.1, kmeans_init=False, dead_code_threshold=0.0),
    )


@register_preset("seed004-smoke-vqvae", "seed 004: 64x64 smoke VQ-VAE, masked L2, attention at 8x8, 1024x256 codes")
def _seed004_vqvae() -> ExperimentConfig:
    return ExperimentConfig(
        model=_seed004_model(),
        loss=LossConfig(reconstruction="masked_l2", perceptual="none", disc_weight=0.0),
        data=DataConfig(kind="smoke", resolution=64, batch_size=64, flip=False),
        train=TrainConfig(max_steps=100000, lr=1e-4),
    )


@register_preset("seed004-smoke-vqgan", "seed 004: 64x64 smoke VQGAN, VGG16 perceptual, adv 0.5, disc start 10k")
def _seed004_vqgan() -> ExperimentConfig:
    # --adversarial-weight 0.5 is taming's disc_weight and --disc-weight-max 0.75 the value the adversarial factor
    # takes at --disc-start (taming's disc_factor): plain weights, no adaptive weight, no ramp (docs/seeds.md).
    return ExperimentConfig(
        model=_seed004_model(),
        loss=LossConfig(
            reconstruction="masked_l2", perceptual="vgg", perceptual_weight=1.0, disc_weight=0.5, adaptive_weight=False,
            disc_start=10000, disc_ramp_steps=0, disc_weight_max=0.75,
        ),
        discriminator=DiscriminatorConfig(n_layers=3, ch=64),
        data=DataConfig(kind="smoke", resolution=64, batch_size=32, flip=False),
        train=TrainConfig(max_steps=100000, lr=1e-4, lr_disc=1e-4),
    )


# -- video ------------------------------------------------------------------------------------------------------
def _moving_digits_video3d_model(ch: int, codebook_size: int) -> ModelConfig:
    return ModelConfig(
        arch="video3d", in_channels=1, resolution=32, ch=ch, ch_mult=[1, 2, 4], num_res_blocks=1, z_channels=16,
        embed_dim=16, num_groups=4, temporal_downsample=1, temporal_attention=True, mid_attention=True,
        quantizer=QuantizerConfig(kind="ema", codebook_size=codebook_size, dead_code_threshold=0.01),
    )


@register_preset("test-video3d", "tiny causal 3D video tokenizer for tests (5x16x16 moving digits, 3D PatchGAN)")
def _test_video3d() -> ExperimentConfig:
    model = _moving_digits_video3d_model(8, 32)
    model.resolution, model.ch_mult, model.z_channels, model.embed_dim, model.num_groups = 16, [1, 2], 8, 8, 4
    return ExperimentConfig(
        model=model,
        loss=LossConfig(perceptual="none", disc_start=1, disc_weight=0.5),
        discriminator=DiscriminatorConfig(n_layers=2, ch=8, norm="group", dims=3),
        data=DataConfig(kind="moving_digits", resolution=16, channels=1, frames=5, batch_size=2, builtin_train_crops=8, val_size=4),
        train=_tiny_train(),
    )


@register_preset("moving-digits-video3d", "causal 3D tokenizer on synthetic moving digits (9x32x32, f4 t2, CPU-sized)")
def _moving_digits_video3d() -> ExperimentConfig:
    # 8 channels at full resolution: about 3 GFLOP per clip for forward + backward, so that a CPU run takes minutes.
    model = _moving_digits_video3d_model(8, 256)
    return ExperimentConfig(
        model=model,
        # No perceptual loss (no backbone file needed) and the 3D PatchGAN only after step 5000: short CPU runs are
        # pure VQ-VAE runs; longer ones switch the adversarial term on.
        loss=LossConfig(reconstruction="l1", perceptual="none", disc_weight=0.1, disc_start=5000),
        discriminator=DiscriminatorConfig(n_layers=2, ch=16, norm="group", dims=3),
        data=DataConfig(kind="moving_digits", resolution=32, channels=1, frames=9, batch_size=4, flip=False, val_size=8),
        train=TrainConfig(
            max_steps=3000, max_time_minutes=5.0, lr=2e-3, warmup_steps=10, val_every_n_steps=250, log_every_n_steps=10,
            diagnostics_every_n_steps=20,
        ),
    )


# -- tiny presets for every quantizer kind (same tiny autoencoder as test-taming) ---------------------------------
def _test_quantizer(quantizer: QuantizerConfig) -> ExperimentConfig:
    cfg = _test_taming()
    cfg.model.quantizer = quantizer
    return cfg


@register_preset("test-vq", "tiny VQGAN with a gradient-learned codebook, k-means init and restarts (32 codes)")
def _test_vq() -> ExperimentConfig:
    return _test_quantizer(QuantizerConfig(kind="vq", codebook_size=32, dead_code_threshold=0.01))


@register_preset("test-fsq", "tiny VQGAN with finite scalar quantization (levels 4x4x2, 32 codes)")
def _test_fsq() -> ExperimentConfig:
    return _test_quantizer(QuantizerConfig(kind="fsq", levels=[4, 4, 2]))


@register_preset("test-lfq", "tiny VQGAN with lookup-free quantization (5 bits, 32 codes)")
def _test_lfq() -> ExperimentConfig:
    return _test_quantizer(QuantizerConfig(kind="lfq", codebook_size=32))


@register_preset("test-rvq", "tiny VQGAN with 2-stage residual EMA VQ (32 codes per stage)")
def _test_rvq() -> ExperimentConfig:
    return _test_quantizer(
        QuantizerConfig(kind="residual", num_stages=2, stage_kind="ema", codebook_size=32, dead_code_threshold=0.01)
    )


@register_preset("test-simvq", "tiny VQGAN with SimVQ (frozen codebook, learned linear map, 32 codes)")
def _test_simvq() -> ExperimentConfig:
    return _test_quantizer(QuantizerConfig(kind="simvq", codebook_size=32))
