"""Typed configuration for every part of a run.

A run is described by one :class:`ExperimentConfig`, made of small dataclasses (model, quantizer, loss,
discriminator, data, training). YAML files set values, dotted command-line options override them
(``--model.ch 64``), and :func:`dump_config` writes the resolved result next to every run. There are no import
strings: every choice is a plain value checked against the ``Literal`` types below, and
:meth:`ExperimentConfig.validate` checks the choices against each other before any training starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

QuantizerKind = Literal["vq", "ema", "fsq", "lfq", "residual", "simvq"]


@dataclass
class QuantizerConfig:
    """Vector quantizer settings.

    Attributes:
        kind: ``vq`` (codebook learned by gradients), ``ema`` (codebook learned by exponential moving averages,
            van den Oord et al. 2017, appendix), ``fsq``, ``lfq``, ``residual`` or ``simvq``.
        codebook_size: number of codes.
        codebook_dim: dimension of the lookup space. ``None`` looks up in ``embed_dim``; a smaller value projects
            to a low-dimensional space first (factorized codes, Yu et al. 2021 "ViT-VQGAN", LlamaGen).
        beta: weight of one of the two VQ terms, the other one has weight 1 (see ``beta_on``).
        beta_on: which term ``beta`` weights. ``commitment`` (default): the encoder term ``||sg[e] - z||^2``, as in
            the VQ-VAE paper (eq. 3), loss ``||e - sg[z]||^2 + beta ||sg[e] - z||^2``. ``codebook``: the codebook
            term, loss ``||sg[e] - z||^2 + beta ||e - sg[z]||^2`` (taming's ``legacy=True`` placement, and seed
            003's "refined loss"). Only quantizers with both terms accept ``codebook`` (``vq``, ``simvq``, and
            ``residual`` over those): ``ema``, ``fsq`` and ``lfq`` have no codebook gradient term to weight.
        decay: EMA decay of the codebook statistics (``ema`` only).
        l2_normalize: look up with l2-normalised codes and latents (cosine similarity, ViT-VQGAN).
        kmeans_init: initialise the codebook with k-means on the first batch of encoder outputs.
        kmeans_iters: Lloyd iterations for ``kmeans_init``.
        dead_code_threshold: a code whose running usage, relative to a uniform share of the hits (1 = used as
            often as under uniform usage), falls below this is restarted from a current encoder output (0 disables
            restarts). Relative, so the same value fits any batch size and codebook size.
        usage_decay: decay of the running usage used to find dead codes (0.95: about 20 steps of memory).
        entropy_weight: weight of an entropy penalty that pushes towards a uniform average code assignment.
        entropy_temperature: temperature of the soft assignment used by the entropy penalty.
    """

    kind: QuantizerKind = "ema"
    codebook_size: int = 1024
    codebook_dim: int | None = None
    beta: float = 0.25
    beta_on: Literal["commitment", "codebook"] = "commitment"
    decay: float = 0.99
    l2_normalize: bool = False
    kmeans_init: bool = True
    kmeans_iters: int = 10
    # Defaults chosen by benchmarks/codebook.py (EMA, k-means, restarts below a tenth of a uniform share).
    dead_code_threshold: float = 0.1
    usage_decay: float = 0.95
    entropy_weight: float = 0.0
    entropy_temperature: float = 0.01
    # FSQ (Mentzer et al. 2023): number of levels per dimension; the codebook size is their product.
    levels: list[int] = field(default_factory=lambda: [8, 5, 5, 5])
    # Residual VQ: number of stages and the quantizer kind used at every stage.
    num_stages: int = 1
    stage_kind: Literal["vq", "ema", "simvq", "fsq", "lfq"] = "ema"
    # LFQ (MAGVIT-v2): weights of the per-sample entropy and of the codebook (batch) entropy terms.
    lfq_sample_entropy_weight: float = 0.1
    lfq_codebook_entropy_weight: float = 0.1
    # Chunk size of the nearest-code search, so that huge codebooks never materialise a full distance matrix.
    search_chunk_size: int = 8192


@dataclass
class ModelConfig:
    """Autoencoder architecture.

    ``arch="taming"`` is the encoder/decoder of Esser et al. 2021 (residual blocks with GroupNorm and SiLU,
    strided-conv downsampling, nearest+conv upsampling, self-attention at ``attn_resolutions``).
    ``arch="resnet"`` is the small residual VQ-VAE of van den Oord et al. 2017 (strided convs, a stack of residual
    blocks, transposed convs in the decoder), as in seed 003.

    The downsampling factor is ``2 ** (len(ch_mult) - 1)`` (:attr:`spatial_factor`).

    Attributes:
        decoder_ch: base width of the decoder; ``None`` mirrors the encoder (``ch``).
        decoder_ch_mult: width multipliers of the decoder levels, listed from the highest resolution to the latent
            one as ``ch_mult`` is (same length: the decoder undoes every downsampling); ``None`` mirrors the
            encoder. When either is set, every upsampling layer also narrows to the next level's width, so that no
            convolution at a resolution is wider than that resolution's width (seed 004's light decoder,
            128 -> 64 -> 32 -> 16); with both ``None`` the decoder is taming's, whose checkpoints load unchanged.
        output_activation: ``tanh`` squashes the reconstruction into (-1, 1), the data range (seed 004); ``none``
            leaves it unbounded (taming).
        downsample_factor: the downsampling factor a config states (seed 000's Key Parameters); ``None`` states
            nothing. When given it must equal the architecture's factor ``2 ** (len(ch_mult) - 1)``, checked by
            :meth:`ExperimentConfig.validate`.
    """

    arch: Literal["taming", "resnet", "video3d"] = "taming"
    in_channels: int = 3
    out_channels: int | None = None
    resolution: int = 32
    ch: int = 64
    ch_mult: list[int] = field(default_factory=lambda: [1, 2, 2])
    num_res_blocks: int = 1
    attn_resolutions: list[int] = field(default_factory=list)
    mid_attention: bool = True
    z_channels: int = 64
    embed_dim: int = 64
    dropout: float = 0.0
    num_groups: int = 32
    upsample: Literal["nearest", "transposed"] = "nearest"
    decoder_ch: int | None = None
    decoder_ch_mult: list[int] | None = None
    output_activation: Literal["none", "tanh"] = "none"
    downsample_factor: int | None = None
    # Recompute the encoder's and decoder's activations in the backward pass instead of storing them
    # (torch.utils.checkpoint): less memory per image for more compute (benchmarks/train_step.py measures both).
    gradient_checkpointing: bool = False
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    # arch="video3d" (causal spatio-temporal tokenizer, MAGVIT-v2 style): number of 2x temporal downsamplings
    # (clips then hold 1 + k * 2**temporal_downsample frames) and causal temporal attention in the middle block.
    temporal_downsample: int = 0
    temporal_attention: bool = True

    @property
    def spatial_factor(self) -> int:
        """The architecture's spatial downsampling factor, ``2 ** (len(ch_mult) - 1)``."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def decoder_widths(self) -> list[int]:
        """Width of the decoder at each level, from the highest resolution to the latent one."""
        ch = self.ch if self.decoder_ch is None else self.decoder_ch
        mult = self.ch_mult if self.decoder_ch_mult is None else self.decoder_ch_mult
        return [ch * m for m in mult]

    @property
    def decoder_mirrors_encoder(self) -> bool:
        return self.decoder_ch is None and self.decoder_ch_mult is None

    @property
    def time_factor(self) -> int:
        """Temporal downsampling factor of ``arch="video3d"`` (1 for image models)."""
        return 2**self.temporal_downsample if self.arch == "video3d" else 1

    @property
    def latent_resolution(self) -> int:
        return self.resolution // self.spatial_factor


@dataclass
class DiscriminatorConfig:
    """PatchGAN discriminator (Isola et al. 2017) as used by taming-transformers.

    Attributes:
        n_layers: number of strided conv layers (3 gives a 70x70 receptive field).
        ch: filters of the first layer.
        norm: ``batch`` (taming), ``group`` or ``none``.
        spectral_norm: wrap every conv in spectral normalisation (Miyato et al. 2018), as in seed 000.
        dims: 2 for images, 3 for a spatio-temporal (video) PatchGAN.
    """

    n_layers: int = 3
    ch: int = 64
    norm: Literal["batch", "group", "none"] = "batch"
    spectral_norm: bool = False
    dims: Literal[2, 3] = 2


@dataclass
class LossConfig:
    """Weights and choices of the stage-1 objective.

    The generator minimises ``w_rec * rec + w_p * perceptual + vq + d_factor * lambda * gan`` where ``lambda`` is
    taming's adaptive weight (ratio of last-layer gradient norms, Esser et al. 2021 eq. 7) times ``disc_weight``,
    and ``d_factor`` is 0 before ``disc_start`` and ramps to ``disc_weight_max`` over ``disc_ramp_steps`` (a step
    to ``disc_weight_max`` at ``disc_start`` when ``disc_ramp_steps = 0``). ``d_factor`` also weights the
    discriminator's own loss. This is taming's ``disc_weight * disc_factor``: with ``adaptive_weight = false`` the
    generator's adversarial weight is ``disc_weight * disc_weight_max`` from ``disc_start`` on (docs/seeds.md, seed
    004). ``disc_weight = 0`` trains a plain VQ-VAE and builds no discriminator.
    """

    reconstruction: Literal["l1", "l2", "masked_l2"] = "l1"
    reconstruction_weight: float = 1.0
    # masked_l2 (seed 004): per-pixel weights; from the dataset's mask, or from ``target > mask_threshold``.
    mask_threshold: float | None = None
    mask_foreground_weight: float = 1.0
    mask_background_weight: float = 0.1
    perceptual: Literal["none", "lpips", "vgg"] = "lpips"
    perceptual_weight: float = 1.0
    lpips_net: Literal["vgg", "alex"] = "vgg"
    # Local file with the torchvision backbone weights (vgg16 or alexnet state dict). Never downloaded.
    backbone_weights: str | None = None
    # A randomly initialised backbone, only when asked for explicitly (tests, smoke runs).
    random_backbone: bool = False
    gan_loss: Literal["hinge", "non_saturating"] = "hinge"
    disc_weight: float = 0.8
    adaptive_weight: bool = True
    disc_start: int = 10000
    disc_ramp_steps: int = 0
    disc_weight_max: float = 1.0
    # Upper bound of the adaptive weight (taming clamps to 1e4).
    adaptive_weight_max: float = 1e4


DataKind = Literal["builtin", "folder", "video_folder", "ucf101", "moving_digits", "smoke", "smoke_video"]


@dataclass
class DataConfig:
    """Where images (or videos) come from and how they are prepared.

    Images are returned as float tensors in [-1, 1], shape (C, H, W) (videos: (C, T, H, W)).
    """

    kind: DataKind = "builtin"
    root: str | None = None
    val_root: str | None = None
    resolution: int = 32
    channels: int = 3
    crop: Literal["random", "center"] = "random"
    flip: bool = True
    # Resize the shorter side to this before cropping (None: ``resolution``). For the built-in photos a scale
    # factor is used instead, see ``builtin_scale``.
    resize: int | None = None
    builtin_scale: float = 1.0
    # Number of random crops per epoch for the built-in dataset, and size of the fixed validation grid.
    builtin_train_crops: int = 4096
    # Colour augmentation of the built-in training crops (validation crops are never changed): a random hue
    # rotation of up to ``builtin_hue`` turns of the colour circle (0.5: any hue) and a random saturation factor in
    # [1 - builtin_saturation, 1 + builtin_saturation]. The training photos hold almost no green; without it the
    # quick-start model turns green leaves blue (benchmarks/colour.py). Off by default, on in the quick-start.
    builtin_hue: float = 0.0
    builtin_saturation: float = 0.0
    val_size: int = 256
    batch_size: int = 16
    val_batch_size: int | None = None
    num_workers: int = 0
    # Video options.
    frames: int = 8
    frame_stride: int = 1
    fps: float | None = None
    clip_offset: Literal["random", "uniform"] = "random"
    frames_as_images: bool = False
    patch_size: int | None = None
    split: int = 1
    # UCF101: folder with classInd.txt and the split lists (None: searched next to ``root``).
    annotations: str | None = None
    # Seed 000's chunked training (video folders): load ``videos_per_chunk`` videos, make ``epochs_per_chunk``
    # passes over them, then ``gan_epochs_per_chunk`` more passes with the discriminator on, then the next chunk.
    # With ``gan_epochs_per_chunk > 0`` the discriminator runs only in those passes (seed 000: 10 then 5); with 0
    # it follows ``loss.disc_start``. One epoch of the run visits every chunk once (``train.max_epochs``: seed 000's
    # ``num_epoch``).
    videos_per_chunk: int | None = None
    epochs_per_chunk: int = 1
    gan_epochs_per_chunk: int = 0


@dataclass
class TrainerSettings:
    """What every training run sets, stage 1 and the priors alike: length, optimiser, schedule, validation,
    checkpoints, logging and hardware (the Lightning Trainer is built from these, ``vqgan.train.harness``).
    Stage 1's :class:`TrainConfig` and the priors' ``PriorTrainConfig`` extend it, so both read ``train.*``.

    Attributes:
        max_steps: optimizer steps to train (ignored when ``max_epochs`` is set).
        max_epochs: train this many epochs instead of ``max_steps`` (seeds 003/004 count epochs; seed 000 counts
            passes over all chunks). ``None``: ``max_steps`` is the limit.
        max_time_minutes: stop after this many minutes even if the step or epoch limit is not reached (the demo's
            time budget). ``None``: no limit.
        lr: learning rate.
        betas: Adam's betas.
        weight_decay: weight decay.
        warmup_steps: linear learning-rate warm-up from ``lr / warmup_steps`` to ``lr``.
        lr_schedule: after the warm-up, ``constant``, or ``cosine`` decay to ``lr * min_lr_ratio`` at the last step.
        min_lr_ratio: final learning rate of the cosine schedule, relative to ``lr``.
        grad_clip: clip the gradients' global norm to this (``None``: no clipping).
        val_every_n_steps: validate every N optimizer steps (ignored when ``val_every_n_epochs`` is set).
        val_every_n_epochs: validate at the end of every N-th epoch (seed 004: every epoch). ``None``: by steps.
        log_every_n_steps: logging interval of the training losses.
        checkpoint_every_n_steps: periodic ``stepNNNNNNN.ckpt`` every N steps (``None``: at every validation).
        checkpoint_every_n_epochs: periodic checkpoint at the end of every N-th epoch (seed 004: 5) instead.
        keep_last_k: periodic checkpoints kept (``-1``: all); ``best.ckpt`` and ``last.ckpt`` come on top.
        monitor: validation metric that picks ``best.ckpt``.
        monitor_mode: whether ``monitor`` is better when higher (``max``) or lower (``min``).
        seed: seed of weights, data order and augmentations.
        precision: Lightning precision (``32-true``, ``bf16-mixed``, ``16-mixed``...).
        accelerator: ``auto``, ``cpu``, ``gpu``...
        devices: devices per machine (``auto``, a count or a list).
        strategy: Lightning strategy (``auto``, ``ddp``, ``fsdp``...).
        num_nodes: machines for multi-node training (torchrun / SLURM).
        compile: ``torch.compile`` the model.
        logger: ``tensorboard`` (``RUN_DIR/logs``), ``wandb`` (``RUN_DIR/wandb`` as well as TensorBoard; needs
            ``pip install wandb``; ``WANDB_MODE=offline`` keeps it local) or ``none``.
        wandb_project: W&B project (default ``vqgan``).
        debug: a handful of steps, validation on two batches, no online logging (seed 002's DEBUG mode).
        max_nonfinite_steps: stop after this many consecutive steps with a non-finite loss or gradient (each one
            is skipped, and no checkpoint is written while they last).
    """

    max_steps: int = 1000
    max_epochs: int | None = None
    max_time_minutes: float | None = None
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.5, 0.9])
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: Literal["constant", "cosine"] = "constant"
    min_lr_ratio: float = 0.1
    grad_clip: float | None = 1.0
    val_every_n_steps: int = 500
    val_every_n_epochs: int | None = None
    log_every_n_steps: int = 25
    checkpoint_every_n_steps: int | None = None
    checkpoint_every_n_epochs: int | None = None
    keep_last_k: int = 3
    monitor: str = "val/psnr"
    monitor_mode: Literal["max", "min"] = "max"
    seed: int = 0
    precision: str = "32-true"
    accelerator: str = "auto"
    devices: str = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    compile: bool = False
    logger: Literal["tensorboard", "wandb", "none"] = "tensorboard"
    wandb_project: str | None = None
    debug: bool = False
    max_nonfinite_steps: int = 20

    def validate(self) -> TrainerSettings:
        """Check the values and their combinations; raise :class:`ConfigError` naming the ``train.*`` key."""
        minimums = [
            ("train.max_steps", self.max_steps, 1),
            ("train.max_epochs", self.max_epochs, 1),
            ("train.max_nonfinite_steps", self.max_nonfinite_steps, 1),
            ("train.val_every_n_steps", self.val_every_n_steps, 1),
            ("train.val_every_n_epochs", self.val_every_n_epochs, 1),
            ("train.checkpoint_every_n_steps", self.checkpoint_every_n_steps, 1),
            ("train.checkpoint_every_n_epochs", self.checkpoint_every_n_epochs, 1),
            ("train.num_nodes", self.num_nodes, 1),
            ("train.warmup_steps", self.warmup_steps, 0),
        ]
        for key, value, low in minimums:
            if value is not None and value < low:
                raise ConfigError(f"{key}={value} must be at least {low}")
        if self.max_time_minutes is not None and self.max_time_minutes <= 0:
            raise ConfigError(f"train.max_time_minutes={self.max_time_minutes} must be positive or null")
        if self.keep_last_k < 1 and self.keep_last_k != -1:
            raise ConfigError(f"train.keep_last_k={self.keep_last_k} must be at least 1 (or -1 to keep every checkpoint)")
        if not self.lr > 0:
            raise ConfigError(f"train.lr={self.lr} must be positive")
        if self.checkpoint_every_n_steps is not None and self.checkpoint_every_n_epochs is not None:
            raise ConfigError(
                f"train.checkpoint_every_n_steps={self.checkpoint_every_n_steps} and "
                f"train.checkpoint_every_n_epochs={self.checkpoint_every_n_epochs}: choose one cadence (set the other "
                "to null)"
            )
        if self.val_every_n_epochs is not None and self.checkpoint_every_n_steps is not None:
            raise ConfigError(
                f"train.checkpoint_every_n_steps={self.checkpoint_every_n_steps} with "
                f"train.val_every_n_epochs={self.val_every_n_epochs}: checkpoint by epochs too "
                "(train.checkpoint_every_n_epochs), or validate by steps (train.val_every_n_epochs=null)"
            )
        if self.max_epochs is not None and self.val_every_n_epochs is not None and self.val_every_n_epochs > self.max_epochs:
            raise ConfigError(
                f"train.val_every_n_epochs={self.val_every_n_epochs} exceeds train.max_epochs={self.max_epochs}: "
                "the run would never validate"
            )
        if self.max_epochs is not None and self.checkpoint_every_n_epochs is not None and (
            self.checkpoint_every_n_epochs > self.max_epochs
        ):
            raise ConfigError(
                f"train.checkpoint_every_n_epochs={self.checkpoint_every_n_epochs} exceeds "
                f"train.max_epochs={self.max_epochs}: no periodic checkpoint would be written"
            )
        return self


@dataclass
class TrainConfig(TrainerSettings):
    """Stage-1 training: the shared :class:`TrainerSettings` and what only the tokenizer needs.

    Attributes:
        lr_disc: the discriminator's learning rate (``None``: ``lr``).
        channels_last: NHWC memory format for images (faster convolutions on most hardware).
        diagnostics_every_n_steps: codebook diagnostics (usage, code norms, gradients) every N steps, and at the
            end of the run; 0 disables them.
        samples_every_n_steps: reserved; reconstruction samples are written at every validation.
    """

    lr_disc: float | None = None
    channels_last: bool = False
    diagnostics_every_n_steps: int = 50
    samples_every_n_steps: int | None = None


@dataclass
class ExperimentConfig:
    """A whole stage-1 run."""

    name: str = "vqgan"
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> ExperimentConfig:
        """Check choices against each other; raise :class:`ConfigError` naming the key. Returns self."""
        from vqgan.config_checks import check_plain_name, check_types

        check_types(self)  # the Python API gets the same type checks as YAML and the command line
        check_plain_name(self.name)
        m, q, loss = self.model, self.model.quantizer, self.loss
        if m.downsample_factor is not None and m.downsample_factor != m.spatial_factor:
            raise ConfigError(
                f"model.downsample_factor={m.downsample_factor} differs from the architecture's factor "
                f"{m.spatial_factor} (2 ** (len(model.ch_mult) - 1) with model.ch_mult={m.ch_mult}); change "
                "model.ch_mult, or set model.downsample_factor to null"
            )
        if m.resolution % m.spatial_factor:
            raise ConfigError(
                f"model.resolution={m.resolution} is not divisible by the downsampling factor "
                f"{m.spatial_factor} (2 ** (len(model.ch_mult) - 1) with model.ch_mult={m.ch_mult})"
            )
        self._validate_decoder()
        self._validate_beta_on()
        if self.data.resolution != m.resolution and self.data.patch_size is None:
            raise ConfigError(
                f"data.resolution={self.data.resolution} differs from model.resolution={m.resolution}; "
                "set both to the same value"
            )
        levels = [m.resolution // 2**i for i in range(len(m.ch_mult))]
        bad = [r for r in m.attn_resolutions if r not in levels]
        if bad and m.arch == "taming":
            raise ConfigError(
                f"model.attn_resolutions={m.attn_resolutions}: {bad} never occur; the encoder's resolutions are "
                f"{levels} for model.resolution={m.resolution} and model.ch_mult={m.ch_mult}"
            )
        if q.kind in ("vq", "ema", "residual", "simvq") and q.codebook_size < 2:
            raise ConfigError(f"model.quantizer.codebook_size={q.codebook_size} must be at least 2")
        if q.codebook_dim is not None and q.codebook_dim < 1:
            raise ConfigError(f"model.quantizer.codebook_dim={q.codebook_dim} must be positive or null")
        if not 0.0 < q.decay < 1.0:
            raise ConfigError(f"model.quantizer.decay={q.decay} must be in (0, 1)")
        if any(min(m.ch * c, m.z_channels) % min(m.num_groups, m.ch * c) for c in m.ch_mult) and m.arch == "taming":
            raise ConfigError(
                f"model.num_groups={m.num_groups} must divide every block width model.ch * model.ch_mult "
                f"({[m.ch * c for c in m.ch_mult]})"
            )
        if loss.reconstruction == "masked_l2" and loss.mask_threshold is None and self.data.kind not in ("smoke", "smoke_video"):
            raise ConfigError(
                "loss.reconstruction=masked_l2 needs masks: set loss.mask_threshold, or use a dataset that "
                "provides masks (data.kind=smoke)"
            )
        if self.data.channels != m.in_channels:
            raise ConfigError(
                f"data.channels={self.data.channels} differs from model.in_channels={m.in_channels}"
            )
        if m.arch == "video3d" and (self.data.frames_as_images or (self.data.frames - 1) % m.time_factor):
            raise ConfigError(
                f"model.arch=video3d needs clips (data.frames_as_images=false) of 1 + k * {m.time_factor} frames "
                f"(model.temporal_downsample={m.temporal_downsample}); got data.frames={self.data.frames}"
            )
        if loss.disc_weight < 0 or loss.perceptual_weight < 0:
            raise ConfigError("loss.disc_weight and loss.perceptual_weight must be non-negative")
        t, d = self.train, self.data
        t.validate()
        for key, value, low in [("data.batch_size", d.batch_size, 1), ("data.num_workers", d.num_workers, 0)]:
            if value < low:
                raise ConfigError(f"{key}={value} must be at least {low}")
        if d.kind == "folder" and not d.root:
            raise ConfigError("data.kind=folder needs data.root (a folder of images)")
        if d.epochs_per_chunk < 1 or d.gan_epochs_per_chunk < 0:
            raise ConfigError(
                f"data.epochs_per_chunk={d.epochs_per_chunk} must be at least 1 and "
                f"data.gan_epochs_per_chunk={d.gan_epochs_per_chunk} at least 0"
            )
        if d.gan_epochs_per_chunk > 0 and not d.videos_per_chunk:
            raise ConfigError(
                f"data.gan_epochs_per_chunk={d.gan_epochs_per_chunk} schedules the discriminator within chunks: set "
                "data.videos_per_chunk (chunked video training) too"
            )
        if d.gan_epochs_per_chunk > 0 and loss.disc_weight == 0:
            raise ConfigError(
                f"data.gan_epochs_per_chunk={d.gan_epochs_per_chunk} needs a discriminator (loss.disc_weight > 0)"
            )
        return self

    def _validate_decoder(self) -> None:
        m = self.model
        if m.decoder_ch is not None and m.decoder_ch < 1:
            raise ConfigError(f"model.decoder_ch={m.decoder_ch} must be positive or null")
        if m.decoder_ch_mult is not None:
            if len(m.decoder_ch_mult) != len(m.ch_mult) or min(m.decoder_ch_mult) < 1:
                raise ConfigError(
                    f"model.decoder_ch_mult={m.decoder_ch_mult} must hold {len(m.ch_mult)} positive multipliers, one "
                    f"per level of model.ch_mult={m.ch_mult} (the decoder undoes every downsampling), or be null"
                )
        if m.arch == "video3d" and not m.decoder_mirrors_encoder:
            raise ConfigError(
                "model.decoder_ch and model.decoder_ch_mult are not available for model.arch=video3d (its decoder "
                "mirrors the encoder); set both to null"
            )
        widths = m.decoder_widths
        if m.arch == "taming" and any(w % min(m.num_groups, w) for w in widths):
            raise ConfigError(
                f"model.num_groups={m.num_groups} must divide every decoder width {widths} "
                "(model.decoder_ch * model.decoder_ch_mult)"
            )

    def _validate_beta_on(self) -> None:
        q = self.model.quantizer
        kind = q.stage_kind if q.kind == "residual" else q.kind
        if q.beta_on == "codebook" and kind not in ("vq", "simvq"):
            where = f"model.quantizer.kind=residual with stage_kind={kind}" if q.kind == "residual" else f"model.quantizer.kind={kind}"
            raise ConfigError(
                f"model.quantizer.beta_on=codebook needs a codebook learned by gradients (kind vq or simvq): "
                f"{where} has no codebook loss term for beta to weight; use beta_on=commitment"
            )


class ConfigError(ValueError):
    """An inconsistent or invalid configuration, reported before any training starts."""


def to_dict(config: Any) -> dict[str, Any]:
    """Plain ``dict`` of a (nested) config dataclass, suitable for YAML and checkpoints."""
    return dataclasses.asdict(config)


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build a (nested) config dataclass from a plain dict, rejecting unknown keys with the valid choices."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    import typing

    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} for {cls.__name__}; valid keys: {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = from_dict(hint, value)
        kwargs[key] = value
    return cls(**kwargs)


def dump_config(config: Any, path: str | Path) -> Path:
    """Write a config dataclass as YAML (the resolved config saved with every run)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    return path


EXPERIMENT_SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "loss": LossConfig,
    "discriminator": DiscriminatorConfig,
    "data": DataConfig,
    "train": TrainConfig,
}


def add_experiment_arguments(parser: Any, defaults: ExperimentConfig | None = None) -> None:
    """Add ``--config`` (YAML) and every field of :class:`ExperimentConfig` as a dotted option
    (``--model.quantizer.kind``) to a jsonargparse parser; ``defaults`` (e.g. a preset) seed the values."""
    from jsonargparse import ActionConfigFile

    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with an experiment configuration")
    parser.add_argument("--name", type=str, default="vqgan", help="name of the run")
    for key, cls in EXPERIMENT_SECTIONS.items():
        parser.add_class_arguments(cls, key, help=(cls.__doc__ or "").strip().split("\n")[0])
    if defaults is not None:
        parser.set_defaults(_flatten({**to_dict(defaults)}))


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def sections_from_namespace(cls: type, sections: dict[str, type], ns: Any) -> Any:
    """Build ``cls`` (a run config made of ``name`` and ``sections``) from a parsed jsonargparse namespace."""
    data = ns.as_dict() if hasattr(ns, "as_dict") else dict(ns)
    return from_dict(cls, {k: data[k] for k in ("name", *sections) if k in data})


def experiment_from_namespace(ns: Any) -> ExperimentConfig:
    """Turn a parsed jsonargparse namespace (holding the experiment keys) into an :class:`ExperimentConfig`."""
    return sections_from_namespace(ExperimentConfig, EXPERIMENT_SECTIONS, ns)


def parse_config_args(
    add_arguments: Any, path: str | Path | None, overrides: list[str] | None, explain: bool = True
) -> Any:
    """Parse ``--config path`` then ``overrides`` with a parser set up by ``add_arguments(parser)``; shared by the
    stage-1 and prior loaders so both refuse abbreviated keys and name the offending one. ``explain`` adds the
    closest valid stage-1 key to the message (it knows :class:`ExperimentConfig`'s keys only)."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False, allow_abbrev=False)  # "--model.d" must not mean dropout
    add_arguments(parser)
    args = list(overrides or [])
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"config file {path} does not exist")
        args = ["--config", str(path), *args]
    try:
        return parser.parse_args(args)
    except Exception as e:  # jsonargparse raises argparse.ArgumentError with the offending key
        from vqgan.config_checks import explain_parser_error

        where = f" in {path}" if path else ""
        message = explain_parser_error(str(e)) if explain else str(e)
        raise ConfigError(f"invalid configuration{where}: {message}") from None


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, preset: str | None = None
) -> ExperimentConfig:
    """Load an :class:`ExperimentConfig` the way ``vqgan fit`` does: preset, then YAML file, then dotted overrides.

    Args:
        path: YAML file with plain values (see ``configs/``).
        overrides: command-line style options, e.g. ``["--model.ch", "32", "--train.lr=1e-3"]``.
        preset: name of a registered preset that provides the defaults.

    Raises:
        ConfigError: an unknown key, a wrong type or an invalid choice, with the key named.
    """
    from vqgan.registry import get_preset

    defaults = get_preset(preset) if preset else None
    ns = parse_config_args(lambda parser: add_experiment_arguments(parser, defaults), path, overrides)
    return experiment_from_namespace(ns)
