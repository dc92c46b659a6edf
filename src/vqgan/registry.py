"""One :class:`Registry` for every "name -> thing" table (timm's ``register_model``), and the stage-1 presets:
functions returning a full experiment config, a tiny ``test-*`` one per architecture. Python, not YAML, is the
one source of truth: the files in ``configs/`` are generated (:data:`CONFIG_FILES`)."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Generic, TypeVar

from vqgan.config import (
    DataConfig,
    DiscriminatorConfig,
    ExperimentConfig,
    LossConfig,
    ModelConfig,
    QuantizerConfig,
    TrainConfig,
    to_dict,
)

T = TypeVar("T")


class UnknownNameError(KeyError, ValueError):
    """A name no entry of a :class:`Registry` has, with the closest ones named; a ``KeyError`` (a failed
    lookup) and a ``ValueError`` (a bad config value), so either ``except`` catches it."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    """Named entries filled by a decorator, ``@REG.register("name", "one line of help")``; ``what`` names an
    entry in messages (``"preset"``)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, T] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, help: str = "") -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``; ``help`` defaults to its docstring's first line."""

        def wrap(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.what} {name!r} is already registered")
            self._entries[name] = obj
            self._help[name] = help or (getattr(obj, "__doc__", None) or "").strip().split("\n")[0]
            return obj

        return wrap

    def __getitem__(self, name: str) -> T:
        if name not in self._entries:
            close = difflib.get_close_matches(str(name), list(self._entries), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UnknownNameError(f"unknown {self.what} {name!r}{hint}; choose one of {', '.join(self)}")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def names(self, prefix: str = "") -> list[str]:
        """Registered names starting with ``prefix``, sorted."""
        return sorted(n for n in self._entries if n.startswith(prefix))

    def describe(self) -> dict[str, str]:
        """``{name: one line of help}``, sorted by name."""
        return {n: self._help[n] for n in self.names()}


PRESETS: Registry[Callable[[], ExperimentConfig]] = Registry("preset")
#: ``@register_preset(name, help)`` registers ``fn() -> ExperimentConfig``; its docstring heads its YAML file.
register_preset = PRESETS.register
list_presets = PRESETS.names


def preset_config(presets: Registry[Callable[[], T]], name: str) -> T:
    """A fresh copy of the run config made by the factory ``presets[name]``, named after the preset."""
    cfg = copy.deepcopy(presets[name]())
    cfg.name = name
    return cfg


def get_preset(name: str) -> ExperimentConfig:
    """A fresh copy of the preset's :class:`ExperimentConfig`, named after the preset."""
    return preset_config(PRESETS, name)


def create_model(name: str, **model_overrides):
    """Build the autoencoder of preset ``name``; keyword arguments override :class:`ModelConfig` fields."""
    from vqgan.models import build_model

    return build_model(dataclasses.replace(get_preset(name).model, **model_overrides))


#: ``configs/`` file -> (``"stage1"`` or ``"prior"``, preset name): every file there is generated.
CONFIG_FILES: dict[str, tuple[str, str]] = {
    "quickstart.yaml": ("stage1", "quickstart"),
    "ucf101_vqgan.yaml": ("stage1", "seed000-ucf101-vqgan"),
    "ffhq_vqgan_f16.yaml": ("stage1", "seed001-taming-f16-1024"),
    "celeba_vqvae.yaml": ("stage1", "seed003-celeba-vqvae"),
    "smoke_vqvae.yaml": ("stage1", "seed004-smoke-vqvae"),
    "smoke_vqgan.yaml": ("stage1", "seed004-smoke-vqgan"),
    "moving_digits_video.yaml": ("stage1", "moving-digits-video3d"),
    "prior_gpt.yaml": ("prior", "quickstart-gpt"),
    "prior_maskgit.yaml": ("prior", "quickstart-maskgit"),
    "prior_flow.yaml": ("prior", "quickstart-flow"),
    "prior_video_digits.yaml": ("prior", "moving-digits-video-gpt"),
}


def preset_yaml(name: str, stage: str = "stage1") -> str:
    """A preset's YAML text: its docstring as ``#`` comments, then every value (what ``configs/`` holds)."""
    import yaml

    from vqgan.models.prior.config import PRIOR_PRESETS

    registry = PRIOR_PRESETS if stage == "prior" else PRESETS
    lines = inspect.cleandoc(registry[name].__doc__ or registry.describe()[name]).splitlines() + [
        f"Generated from the preset {name!r} by `vqgan presets --write-configs configs/`: change the "
        "preset in",
        "the package and regenerate; every key can be overridden on the command line (`vqgan fit --help`).",
    ]
    header = "".join(f"# {line}".rstrip() + "\n" for line in lines)
    return header + yaml.safe_dump(to_dict(preset_config(registry, name)), sort_keys=False)


def write_config_files(folder: str | Path) -> list[Path]:
    """Write every file of :data:`CONFIG_FILES` into ``folder``; returns the paths written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for file, (stage, name) in CONFIG_FILES.items():
        (folder / file).write_text(preset_yaml(name, stage))
    return [folder / file for file in CONFIG_FILES]


# -- tiny presets for tests ---------------------------------------------------------------------------------
def _tiny_train() -> TrainConfig:
    return TrainConfig(max_steps=2, val_every_n_steps=2, log_every_n_steps=1, diagnostics_every_n_steps=1)


@register_preset("test-taming", "tiny taming-style VQGAN for tests (16x16, 8 channels, 32 codes)")
def _test_taming() -> ExperimentConfig:
    return ExperimentConfig(
        model=ModelConfig(
            resolution=16, ch=8, ch_mult=[1, 2], attn_resolutions=[8], z_channels=8, embed_dim=8,
            num_groups=4, quantizer=QuantizerConfig(kind="ema", codebook_size=32, dead_code_threshold=0.01),
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
            arch="resnet", resolution=16, ch=16, ch_mult=[1, 1, 1], num_res_blocks=2, z_channels=8,
            embed_dim=8, quantizer=QuantizerConfig(kind="vq", codebook_size=32, kmeans_init=False,
                                                   dead_code_threshold=0.0),
        ),
        loss=LossConfig(reconstruction="l2", perceptual="none", disc_weight=0.0),
        data=DataConfig(resolution=16, batch_size=4, builtin_train_crops=32, val_size=8),
        train=_tiny_train(),
    )


#: Tiny presets for every quantizer kind: ``test-taming`` with another quantizer.
_TINY_QUANTIZERS = {
    "test-vq": ("tiny VQGAN with a gradient-learned codebook, k-means init and restarts (32 codes)",
                dict(kind="vq", codebook_size=32, dead_code_threshold=0.01)),
    "test-fsq": ("tiny VQGAN with finite scalar quantization (levels 4x4x2, 32 codes)",
                 dict(kind="fsq", levels=[4, 4, 2])),
    "test-lfq": ("tiny VQGAN with lookup-free quantization (5 bits, 32 codes)",
                 dict(kind="lfq", codebook_size=32)),
    "test-rvq": ("tiny VQGAN with 2-stage residual EMA VQ (32 codes per stage)",
                 dict(kind="residual", num_stages=2, stage_kind="ema", codebook_size=32,
                      dead_code_threshold=0.01)),
    "test-simvq": ("tiny VQGAN with SimVQ (frozen codebook, learned linear map, 32 codes)",
                   dict(kind="simvq", codebook_size=32)),
}


def _test_quantizer(**quantizer) -> ExperimentConfig:
    cfg = _test_taming()
    cfg.model.quantizer = QuantizerConfig(**quantizer)
    return cfg


for _name, (_help, _quantizer) in _TINY_QUANTIZERS.items():
    register_preset(_name, _help)(lambda q=_quantizer: _test_quantizer(**q))


# -- the quick-start model of the demo ----------------------------------------------------------------------
@register_preset("quickstart", "demo tokenizer: 32x32 built-in crops, 8x8 tokens, 1024 codes, 5 CPU minutes")
def _quickstart() -> ExperimentConfig:
    """Quick-start tokenizer of `make demo`: 32x32 crops of the built-in photos -> 8x8 tokens, 1024 codes.

    2100 steps, stopped after 4.75 minutes (train.max_time_minutes) on a slower machine;
    --train.max_time_minutes null lifts that. Override any key on the command line, e.g.
    --train.max_steps 1000 --model.quantizer.codebook_size 512.
    """
    # Sized for two CPU cores: a narrow model (ch 32, f4) sees more images in the time budget than a wider
    # one; L2 is what PSNR measures; a cosine decay gains about 1 dB at 700 steps. 2100 steps take about 4.3
    # minutes on two idle cores (23.2 dB; 1800 steps gave 22.9 dB).
    return ExperimentConfig(
        model=ModelConfig(resolution=32, ch=32, ch_mult=[1, 2, 2], z_channels=32, embed_dim=32, num_groups=16,
                          quantizer=QuantizerConfig(kind="ema", codebook_size=1024)),
        loss=LossConfig(reconstruction="l2", perceptual="none", disc_weight=0.0),
        data=DataConfig(kind="builtin", resolution=32, batch_size=16, builtin_hue=0.5),
        train=TrainConfig(max_steps=2100, max_time_minutes=4.75, lr=2e-3, betas=[0.9, 0.99],
                          val_every_n_steps=350, warmup_steps=50, lr_schedule="cosine"),
    )


# -- one preset per seed system -----------------------------------------------------------------------------
@register_preset("seed000-ucf101-vqgan", "seed 000: UCF101 frames, widths 64-512, latent 32, 512 codes")
def _seed000() -> ExperimentConfig:
    """Seed 000: VQGAN on UCF101 frames (frames used as independent images); docs/seeds.md maps every
    setting of the seed to its key.

    Point data.root at the UCF-101 folder (class folders of .avi; the split lists ucfTrainTestlist/ next to
    it, or set data.annotations). LPIPS needs the VGG16 weights from a local file:
      vqgan fit --config configs/ucf101_vqgan.yaml --data.root data/UCF-101 --run-dir runs/ucf101 \\
          --loss.backbone_weights /path/to/vgg16-397923af.pth
    Patch-based processing: --data.patch_size 32 --model.resolution 32.
    """
    return ExperimentConfig(
        model=ModelConfig(
            resolution=64, ch=64, ch_mult=[1, 2, 4, 8], attn_resolutions=[8], z_channels=32, embed_dim=32,
            upsample="transposed", downsample_factor=8,
            quantizer=QuantizerConfig(kind="ema", codebook_size=512),
        ),
        # disc_start 0: the discriminator follows the per-chunk schedule (data.gan_epochs_per_chunk).
        loss=LossConfig(reconstruction="l2", perceptual_weight=0.1, disc_weight=0.1, adaptive_weight=False,
                        disc_start=0),
        discriminator=DiscriminatorConfig(norm="none", spectral_norm=True),
        # The seed does not state its chunk size; 500 videos fit a 64 GB host.
        data=DataConfig(kind="ucf101", resolution=64, batch_size=64, frames=1, frames_as_images=True,
                        crop="center", videos_per_chunk=500, epochs_per_chunk=10, gan_epochs_per_chunk=5,
                        test_chunk=13),
        train=TrainConfig(max_epochs=3, lr=2e-4),
    )


@register_preset("seed001-taming-f16-1024", "seeds 001/002: taming VQGAN f16, 1024 codes, FFHQ 256")
def _seed001() -> ExperimentConfig:
    """Seeds 001/002: taming-transformers' VQGAN f16 with 1024 codes on FFHQ 256x256 (Esser et al. 2021).

    Point data.root at a folder of FFHQ images (any layout, searched recursively). The LPIPS backbone is
    read from a local file: --loss.backbone_weights /path/to/vgg16-397923af.pth
    """
    return ExperimentConfig(
        model=ModelConfig(
            resolution=256, ch=128, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2, attn_resolutions=[16],
            z_channels=256, embed_dim=256,
            quantizer=QuantizerConfig(kind="vq", codebook_size=1024, kmeans_init=False,
                                      dead_code_threshold=0.0),
        ),
        loss=LossConfig(reconstruction="l1", disc_start=30001),
        data=DataConfig(kind="folder", root="data/ffhq", resolution=256, batch_size=8, crop="center"),
        train=TrainConfig(max_steps=400000, lr=4.5e-6 * 8, val_every_n_steps=5000),
    )


@register_preset("seed003-celeba-vqvae", "seed 003: CelebA 128 residual VQ-VAE, 512x128 codes, lr 2.25e-4")
def _seed003() -> ExperimentConfig:
    """Seed 003: residual VQ-VAE (van den Oord et al. 2017) on CelebA 128x128.

    The seed's VQ loss weighs the codebook term by 0.25 (model.quantizer.beta_on codebook). Point data.root at
    img_align_celeba/.
    """
    return ExperimentConfig(
        model=ModelConfig(
            arch="resnet", resolution=128, ch=256, ch_mult=[1, 1, 1], num_res_blocks=4, z_channels=128,
            embed_dim=128, upsample="transposed",
            quantizer=QuantizerConfig(kind="vq", codebook_size=512, beta_on="codebook", kmeans_init=False,
                                      dead_code_threshold=0.0),
        ),
        loss=LossConfig(reconstruction="l2", perceptual="none", disc_weight=0.0),
        data=DataConfig(kind="folder", root="data/celeba/img_align_celeba", resolution=128, batch_size=64,
                        crop="center", flip=False),
        train=TrainConfig(max_steps=100000, lr=2.25e-4, betas=[0.9, 0.999], grad_clip=None),
    )


def _seed004(loss: LossConfig, batch_size: int, **train) -> ExperimentConfig:
    """Seed 004's model and its Training Tips: 100 epochs, a checkpoint every 5, validation every epoch."""
    return ExperimentConfig(
        model=ModelConfig(
            resolution=64, ch=128, ch_mult=[1, 2, 4, 8], attn_resolutions=[8], z_channels=256, embed_dim=256,
            decoder_ch=16, decoder_ch_mult=[1, 2, 4, 8], output_activation="tanh",
            quantizer=QuantizerConfig(kind="vq", codebook_size=1024, beta=0.1, kmeans_init=False,
                                      dead_code_threshold=0.0),
        ),
        loss=loss,
        data=DataConfig(kind="smoke", resolution=64, batch_size=batch_size, flip=False),
        train=TrainConfig(max_epochs=100, checkpoint_every_n_epochs=5, val_every_n_epochs=1, lr=1e-4,
                          **train),
    )


@register_preset("seed004-smoke-vqvae", "seed 004: 64x64 smoke VQ-VAE, masked L2, 1024 codes")
def _seed004_vqvae() -> ExperimentConfig:
    """Seed 004, VQ-VAE variant: 64x64 smoke plumes (procedural, with masks), masked L2 + VQ loss.

    Encoder 128-256-512-1024 and light decoder 128-64-32-16 with a tanh output, attention at 8x8, 1024
    gradient-learned codes of dimension 256 (codebook + 0.1 * commitment; docs/seeds.md says why).
    """
    return _seed004(LossConfig(reconstruction="masked_l2", perceptual="none", disc_weight=0.0), 64)


@register_preset("seed004-smoke-vqgan", "seed 004: 64x64 smoke VQGAN, VGG16 perceptual, adv 0.5 from 10k")
def _seed004_vqgan() -> ExperimentConfig:
    """Seed 004, VQGAN variant: the VQ-VAE variant's model + VGG16 feature loss and a PatchGAN hinge loss.

    The adversarial weight is the plain 0.5 (taming's disc_weight) times 0.75 (its disc_factor) from step
    10000 on: no adaptive weight, no ramp (docs/seeds.md says why). VGG16 weights from a local file:
    --loss.backbone_weights /path/to/vgg16-397923af.pth
    """
    loss = LossConfig(reconstruction="masked_l2", perceptual="vgg", disc_weight=0.5, adaptive_weight=False,
                      disc_start=10000, disc_weight_max=0.75)
    return _seed004(loss, 32, lr_disc=1e-4)


# -- video ----------------------------------------------------------------------------------------------
def _moving_digits_model(resolution: int, ch_mult: list[int], width: int, codebook_size: int) -> ModelConfig:
    return ModelConfig(
        arch="video3d", in_channels=1, resolution=resolution, ch=8, ch_mult=ch_mult, z_channels=width,
        embed_dim=width, num_groups=4, temporal_downsample=1,
        quantizer=QuantizerConfig(kind="ema", codebook_size=codebook_size, dead_code_threshold=0.01),
    )


@register_preset("test-video3d", "tiny causal 3D video tokenizer for tests (5x16x16 moving digits)")
def _test_video3d() -> ExperimentConfig:
    return ExperimentConfig(
        model=_moving_digits_model(16, [1, 2], 8, 32),
        loss=LossConfig(perceptual="none", disc_start=1, disc_weight=0.5),
        discriminator=DiscriminatorConfig(n_layers=2, ch=8, norm="group", dims=3),
        data=DataConfig(kind="moving_digits", resolution=16, channels=1, frames=5, batch_size=2,
                        builtin_train_crops=8, val_size=4),
        train=_tiny_train(),
    )


@register_preset("moving-digits-video3d", "causal 3D tokenizer on moving digits (9x32x32, f4 t2, CPU-sized)")
def _moving_digits_video3d() -> ExperimentConfig:
    """Causal spatio-temporal tokenizer (model.arch: video3d, MAGVIT-v2-style causal 3D convolutions).

    Synthetic moving digits (scikit-learn's 8x8 digits): 9-frame 32x32 grey clips -> 5 latent frames of 8x8
    codes, 256 codes; a few CPU minutes. The 3D PatchGAN starts at loss.disc_start (raise train.max_steps).
      vqgan fit --config configs/moving_digits_video.yaml --run-dir runs/moving_digits
    """
    # 8 channels at full resolution (about 3 GFLOP per clip, forward + backward) and no perceptual loss: short
    # CPU runs are pure VQ-VAE runs.
    return ExperimentConfig(
        model=_moving_digits_model(32, [1, 2, 4], 16, 256),
        loss=LossConfig(perceptual="none", disc_weight=0.1, disc_start=5000),
        discriminator=DiscriminatorConfig(n_layers=2, ch=16, norm="group", dims=3),
        data=DataConfig(kind="moving_digits", resolution=32, channels=1, frames=9, batch_size=4, flip=False,
                        val_size=8),
        train=TrainConfig(max_steps=3000, max_time_minutes=5.0, lr=2e-3, warmup_steps=10,
                          val_every_n_steps=250, log_every_n_steps=10, diagnostics_every_n_steps=20),
    )
