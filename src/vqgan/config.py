"""Typed configuration of a stage-1 run: one :class:`ExperimentConfig` of small dataclasses, set by YAML and
dotted options (``--model.ch 64``), checked by :meth:`ExperimentConfig.validate` before training starts."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

QuantizerKind = Literal["vq", "ema", "fsq", "lfq", "residual", "simvq"]


@dataclass
class QuantizerConfig:
    """Vector quantizer settings.

    ``beta_on=commitment`` is the VQ-VAE paper's loss (eq. 3), ``||e - sg[z]||^2 + beta ||sg[e] - z||^2``;
    ``codebook`` is taming's ``legacy=True`` placement (seed 003), ``||sg[e] - z||^2 + beta ||e - sg[z]||^2``,
    only for kinds with a codebook gradient term (``vq``, ``simvq``, ``residual`` over those).

    Attributes:
        kind: ``vq`` (gradient-learned codebook), ``ema`` (EMA), ``fsq``, ``lfq``, ``residual``, ``simvq``.
        codebook_size: number of codes.
        codebook_dim: lookup dimension; below ``embed_dim``: factorized codes (ViT-VQGAN).
        beta: weight of one of the two VQ terms, the other has weight 1 (see ``beta_on``).
        beta_on: which term ``beta`` weights: ``commitment`` (the encoder term) or ``codebook``.
        decay: EMA decay of the codebook statistics (``ema`` only).
        l2_normalize: look up with l2-normalised codes and latents (cosine similarity, ViT-VQGAN).
        kmeans_init: initialise the codebook with k-means on the first batch of encoder outputs.
        kmeans_iters: Lloyd iterations for ``kmeans_init``.
        dead_code_threshold: restart a code used less than this share of uniform usage (0: never).
        usage_decay: decay of the running usage used to find dead codes (0.95: about 20 steps of memory).
        entropy_weight: weight of an entropy penalty that pushes towards a uniform average code assignment.
        entropy_temperature: temperature of the soft assignment used by the entropy penalty.
        levels: FSQ (Mentzer et al. 2023): levels per dimension; the codebook size is their product.
        num_stages: residual VQ: quantization stages, each quantizing what the previous ones left.
        stage_kind: residual VQ: the quantizer kind of every stage.
        lfq_sample_entropy_weight: LFQ (MAGVIT-v2): weight of the per-sample entropy term (confident codes).
        lfq_codebook_entropy_weight: LFQ (MAGVIT-v2): weight of the batch entropy term (diverse codes).
        search_chunk_size: codes compared per chunk in the nearest-code search (bounds the distance matrix).
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
    levels: list[int] = field(default_factory=lambda: [8, 5, 5, 5])
    num_stages: int = 1
    stage_kind: Literal["vq", "ema", "simvq", "fsq", "lfq"] = "ema"
    lfq_sample_entropy_weight: float = 0.1
    lfq_codebook_entropy_weight: float = 0.1
    search_chunk_size: int = 8192


@dataclass
class ModelConfig:
    """Autoencoder architecture; it downsamples by ``2 ** (len(ch_mult) - 1)`` (:attr:`spatial_factor`).

    Attributes:
        arch: ``taming`` (Esser et al. 2021), ``resnet`` (van den Oord et al. 2017) or causal ``video3d``.
        in_channels: image channels (3 for RGB, 1 for grey).
        out_channels: channels the decoder outputs (``None``: ``in_channels``).
        resolution: side of the square training crops, in pixels.
        ch: base width: channels of the first encoder level.
        ch_mult: width multiplier of each resolution level; each level after the first halves the resolution.
        num_res_blocks: residual blocks per resolution level.
        attn_resolutions: resolutions (in pixels) at which the taming encoder/decoder add self-attention.
        mid_attention: self-attention in the middle block (at the latent resolution).
        z_channels: channels of the encoder output before the projection to ``embed_dim``.
        embed_dim: channels of the latents that are quantized.
        dropout: dropout in the residual blocks.
        num_groups: GroupNorm groups (must divide every block width).
        upsample: decoder upsampling: ``nearest`` + conv (taming) or ``transposed`` convolutions.
        decoder_ch: base width of the decoder; ``None`` mirrors the encoder (``ch``).
        decoder_ch_mult: decoder width multipliers, ordered as ``ch_mult``; ``None``: the encoder's.
        output_activation: ``tanh`` squashes the output into (-1, 1) (seed 004); ``none`` (taming).
        downsample_factor: the factor a config states (seed 000), checked against ``ch_mult``.
        gradient_checkpointing: recompute encoder and decoder activations in the backward pass (less memory).
        quantizer: the vector quantizer between encoder and decoder.
        temporal_downsample: ``video3d``: 2x temporal downsamplings (clips hold ``1 + k * 2**this`` frames).
        temporal_attention: ``video3d``: causal temporal attention in the middle block.
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
    # benchmarks/train_step.py measures gradient checkpointing's memory saving and its cost.
    gradient_checkpointing: bool = False
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
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
        return [ch * m for m in self.decoder_ch_mult or self.ch_mult]

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

    The generator minimises ``w_rec * rec + w_p * perceptual + vq + d_factor * lambda * gan``: ``lambda`` is
    taming's adaptive weight (Esser et al. 2021 eq. 7) times ``disc_weight``; ``d_factor`` (0 before
    ``disc_start``, then ramping to ``disc_weight_max``) also weights the discriminator's loss (taming's
    ``disc_factor``).

    Attributes:
        reconstruction: pixel loss: ``l1``, ``l2`` or ``masked_l2`` (per-pixel weights, seed 004).
        reconstruction_weight: weight of the pixel loss.
        mask_threshold: ``masked_l2``: foreground is ``target > this`` (``None``: the dataset's masks).
        mask_foreground_weight: ``masked_l2``: weight of foreground pixels.
        mask_background_weight: ``masked_l2``: weight of background pixels.
        perceptual: perceptual loss: ``lpips`` (Zhang et al. 2018), ``vgg`` (VGG16 features) or ``none``.
        perceptual_weight: weight of the perceptual loss.
        lpips_net: LPIPS backbone: ``vgg`` or ``alex``.
        backbone_weights: local file of the torchvision backbone weights (vgg16 or alexnet); never downloaded.
        random_backbone: a randomly initialised perceptual backbone, only when asked for (tests, smoke runs).
        gan_loss: adversarial loss: ``hinge`` (taming) or ``non_saturating``.
        disc_weight: weight of the adversarial term (0: no discriminator, a plain VQ-VAE).
        adaptive_weight: scale the adversarial term by taming's ratio of last-layer gradient norms (eq. 7).
        disc_start: step at which the adversarial term starts.
        disc_ramp_steps: steps of the adversarial factor's ramp from 0 to ``disc_weight_max`` (0: a jump).
        disc_weight_max: adversarial factor after the ramp.
        adaptive_weight_max: upper bound of the adaptive weight (taming clamps to 1e4).
    """

    reconstruction: Literal["l1", "l2", "masked_l2"] = "l1"
    reconstruction_weight: float = 1.0
    mask_threshold: float | None = None
    mask_foreground_weight: float = 1.0
    mask_background_weight: float = 0.1
    perceptual: Literal["none", "lpips", "vgg"] = "lpips"
    perceptual_weight: float = 1.0
    lpips_net: Literal["vgg", "alex"] = "vgg"
    backbone_weights: str | None = None
    random_backbone: bool = False
    gan_loss: Literal["hinge", "non_saturating"] = "hinge"
    disc_weight: float = 0.8
    adaptive_weight: bool = True
    disc_start: int = 10000
    disc_ramp_steps: int = 0
    disc_weight_max: float = 1.0
    adaptive_weight_max: float = 1e4


DataKind = Literal["builtin", "folder", "video_folder", "ucf101", "moving_digits", "smoke", "smoke_video"]


@dataclass
class DataConfig:
    """Where images (``(C, H, W)`` in [-1, 1]) or clips (``(C, T, H, W)``) come from, and how they are made.

    Seed 000's chunked training: load ``videos_per_chunk`` videos, make ``epochs_per_chunk`` passes, then
    ``gan_epochs_per_chunk`` more with the discriminator on, then the next chunk; an epoch visits every
    chunk once.

    Attributes:
        kind: ``builtin`` (scikit-image photos), ``folder`` (images, searched recursively), ``video_folder``,
            ``ucf101``, ``moving_digits``, ``smoke`` or ``smoke_video`` (synthetic).
        root: folder of the images or videos.
        val_root: folder of the validation images (``None``: an evenly spread tenth of ``root`` is held out).
        resolution: side of the square crops, in pixels.
        channels: image channels (3 for RGB, 1 for grey).
        crop: ``random`` crops for training, or ``center`` crops.
        flip: random horizontal flips for training.
        resize: resize the shorter side to this before cropping (``None``: ``resolution``).
        builtin_scale: the built-in photos are scaled by this factor before cropping.
        builtin_train_crops: random crops per epoch of the built-in and synthetic datasets.
        builtin_hue: random hue rotation of the built-in training crops, up to this many turns (0.5: any hue).
        builtin_saturation: random saturation factor in [1 - this, 1 + this] for the built-in training crops.
        val_size: at most this many validation images (the built-in photos: a fixed grid of crops).
        batch_size: training batch size (per process).
        val_batch_size: validation batch size (``None``: ``batch_size``).
        num_workers: data loader worker processes.
        frames: frames per clip (videos).
        frame_stride: keep every N-th frame of a video.
        fps: resample videos to this frame rate (``None``: as stored).
        clip_offset: where a training clip starts: ``random`` or ``uniform`` (centred).
        frames_as_images: train an image tokenizer on the frames of the clips (seed 000).
        patch_size: cut every frame into patches of this side (seed 000's patch-based processing).
        split: UCF101 train/test split (1, 2 or 3).
        annotations: UCF101: folder of classInd.txt and the split lists (``None``: searched next to ``root``).
        videos_per_chunk: process the videos in chunks of this many (seed 000).
        epochs_per_chunk: reconstruction passes over each chunk (seed 000's epochs_per_batch).
        gan_epochs_per_chunk: further passes with the discriminator (seed 000: 5); 0: ``loss.disc_start``.
        test_chunk: validate on this chunk of the training videos, never trained on (seed 000's test_batch).
        num_digits: ``moving_digits``: digits per clip; the class is the digits sorted ({7, 3}: 37).
    """

    kind: DataKind = "builtin"
    root: str | None = None
    val_root: str | None = None
    resolution: int = 32
    channels: int = 3
    crop: Literal["random", "center"] = "random"
    flip: bool = True
    resize: int | None = None
    builtin_scale: float = 1.0
    builtin_train_crops: int = 4096
    # Colour augmentation: the training photos hold almost no green; without it the quick-start model turns
    # green leaves blue (benchmarks/colour.py). Off by default, on in the quick-start.
    builtin_hue: float = 0.0
    builtin_saturation: float = 0.0
    val_size: int = 256
    batch_size: int = 16
    val_batch_size: int | None = None
    num_workers: int = 0
    frames: int = 8
    frame_stride: int = 1
    fps: float | None = None
    clip_offset: Literal["random", "uniform"] = "random"
    frames_as_images: bool = False
    patch_size: int | None = None
    split: int = 1
    annotations: str | None = None
    videos_per_chunk: int | None = None
    epochs_per_chunk: int = 1
    gan_epochs_per_chunk: int = 0
    # The chunks of ``test_chunk`` come in a fixed order that does not depend on ``train.seed``.
    test_chunk: int | None = None
    num_digits: int = 2


@dataclass
class TrainerSettings:
    """What every training run sets, stage 1 and the priors alike (:mod:`vqgan.train.harness`).

    Attributes:
        max_steps: optimizer steps to train (ignored when ``max_epochs`` is set).
        max_epochs: train this many epochs instead of ``max_steps`` (seeds 000/003/004). ``None``: by steps.
        max_time_minutes: stop after this many minutes, even before the step or epoch limit.
        lr: learning rate.
        betas: Adam's betas.
        weight_decay: weight decay.
        warmup_steps: linear learning-rate warm-up from ``lr / warmup_steps`` to ``lr``.
        lr_schedule: after the warm-up, ``constant``, or ``cosine`` decay to ``lr * min_lr_ratio``.
        min_lr_ratio: final learning rate of the cosine schedule, relative to ``lr``.
        grad_clip: clip the gradients' global norm to this (``None``: no clipping).
        val_every_n_steps: validate every N optimizer steps (ignored when ``val_every_n_epochs`` is set).
        val_every_n_epochs: validate at the end of every N-th epoch (seed 004: 1). ``None``: by steps.
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
        logger: ``tensorboard`` (``RUN_DIR/logs``), ``wandb`` (needs ``pip install wandb``), ``none``.
        wandb_project: W&B project (default ``vqgan``).
        debug: a handful of steps, validation on two batches, no online logging (seed 002's DEBUG mode).
        max_nonfinite_steps: stop after this many consecutive steps with a non-finite loss or gradient.
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
        keys = ["max_steps", "max_epochs", "max_nonfinite_steps", "val_every_n_steps", "num_nodes",
                "val_every_n_epochs", "checkpoint_every_n_steps", "checkpoint_every_n_epochs", "warmup_steps"]
        for key in keys:
            check_minimum(f"train.{key}", getattr(self, key), 0 if key == "warmup_steps" else 1)
        minutes, keep, max_epochs = self.max_time_minutes, self.keep_last_k, self.max_epochs
        refuse(minutes is not None and minutes <= 0,
               f"train.max_time_minutes={minutes} must be positive or null")
        refuse(keep < 1 and keep != -1,
               f"train.keep_last_k={keep} must be at least 1 (or -1 to keep every checkpoint)")
        refuse(not self.lr > 0, f"train.lr={self.lr} must be positive")
        steps, epochs = self.checkpoint_every_n_steps, self.checkpoint_every_n_epochs
        val_epochs = self.val_every_n_epochs
        refuse(steps is not None and epochs is not None,
               f"train.checkpoint_every_n_steps={steps} and train.checkpoint_every_n_epochs={epochs}: "
               "choose one cadence (set the other to null)")
        refuse(val_epochs is not None and steps is not None,
               f"train.checkpoint_every_n_steps={steps} with train.val_every_n_epochs={val_epochs}: "
               "checkpoint by epochs too (train.checkpoint_every_n_epochs), or validate by steps "
               "(train.val_every_n_epochs=null)")
        refuse(max_epochs is not None and (val_epochs or 0) > max_epochs,
               f"train.val_every_n_epochs={val_epochs} exceeds train.max_epochs={max_epochs}: the run "
               "would never validate")
        refuse(max_epochs is not None and (epochs or 0) > max_epochs,
               f"train.checkpoint_every_n_epochs={epochs} exceeds train.max_epochs={max_epochs}: no "
               "periodic checkpoint would be written")
        return self


@dataclass
class TrainConfig(TrainerSettings):
    """Stage-1 training: the shared :class:`TrainerSettings` and what only the tokenizer needs.

    Attributes:
        lr_disc: the discriminator's learning rate (``None``: ``lr``).
        channels_last: NHWC memory format for images (faster convolutions on most hardware).
        diagnostics_every_n_steps: codebook diagnostics every N steps and at the end (0: off).
        samples_every_n_steps: reserved; reconstruction samples are written at every validation.
    """

    lr_disc: float | None = None
    channels_last: bool = False
    diagnostics_every_n_steps: int = 50
    samples_every_n_steps: int | None = None


@dataclass
class ExperimentConfig:
    """A whole stage-1 run.

    Attributes:
        name: name of the run (a plain name: labels and file names).
        model: the autoencoder.
        loss: the stage-1 objective.
        discriminator: the PatchGAN discriminator (built when ``loss.disc_weight > 0``).
        data: the images or videos.
        train: optimisation, validation, checkpoints and hardware.
    """

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
        m, q, loss, d = self.model, self.model.quantizer, self.loss, self.data
        factor = f"{m.spatial_factor} (2 ** (len(model.ch_mult) - 1) with model.ch_mult={m.ch_mult})"
        refuse(m.downsample_factor is not None and m.downsample_factor != m.spatial_factor,
               f"model.downsample_factor={m.downsample_factor} differs from the architecture's factor "
               f"{factor}; change model.ch_mult, or set model.downsample_factor to null")
        refuse(m.resolution % m.spatial_factor,
               f"model.resolution={m.resolution} is not divisible by the downsampling factor {factor}")
        self._validate_decoder()
        kind = q.stage_kind if q.kind == "residual" else q.kind
        where = f"kind=residual with stage_kind={kind}" if q.kind == "residual" else f"kind={kind}"
        refuse(q.beta_on == "codebook" and kind not in ("vq", "simvq"),
               "model.quantizer.beta_on=codebook needs a codebook learned by gradients (kind vq or simvq): "
               f"model.quantizer.{where} has no codebook loss term for beta to weight; use "
               "beta_on=commitment")
        refuse(d.resolution != m.resolution and d.patch_size is None,
               f"data.resolution={d.resolution} differs from model.resolution={m.resolution}; set both to "
               "the same value")
        levels = [m.resolution // 2**i for i in range(len(m.ch_mult))]
        bad = [r for r in m.attn_resolutions if r not in levels]
        refuse(bad and m.arch == "taming",
               f"model.attn_resolutions={m.attn_resolutions}: {bad} never occur; the encoder's resolutions "
               f"are {levels} for model.resolution={m.resolution} and model.ch_mult={m.ch_mult}")
        refuse(q.kind in ("vq", "ema", "residual", "simvq") and q.codebook_size < 2,
               f"model.quantizer.codebook_size={q.codebook_size} must be at least 2")
        refuse(q.codebook_dim is not None and q.codebook_dim < 1,
               f"model.quantizer.codebook_dim={q.codebook_dim} must be positive or null")
        refuse(not 0.0 < q.decay < 1.0, f"model.quantizer.decay={q.decay} must be in (0, 1)")
        widths = [m.ch * c for c in m.ch_mult]
        refuse(m.arch == "taming" and any(min(w, m.z_channels) % min(m.num_groups, w) for w in widths),
               f"model.num_groups={m.num_groups} must divide every block width model.ch * model.ch_mult "
               f"({widths})")
        refuse(loss.reconstruction == "masked_l2" and loss.mask_threshold is None
               and d.kind not in ("smoke", "smoke_video"),
               "loss.reconstruction=masked_l2 needs masks: set loss.mask_threshold, or use a dataset that "
               "provides masks (data.kind=smoke)")
        refuse(d.channels != m.in_channels,
               f"data.channels={d.channels} differs from model.in_channels={m.in_channels}")
        refuse(m.arch == "video3d" and (d.frames_as_images or (d.frames - 1) % m.time_factor),
               f"model.arch=video3d needs clips (data.frames_as_images=false) of 1 + k * {m.time_factor} "
               f"frames (model.temporal_downsample={m.temporal_downsample}); got data.frames={d.frames}")
        refuse(loss.disc_weight < 0 or loss.perceptual_weight < 0,
               "loss.disc_weight and loss.perceptual_weight must be non-negative")
        self.train.validate()
        check_minimum("data.batch_size", d.batch_size, 1)
        check_minimum("data.num_workers", d.num_workers, 0)
        refuse(d.kind == "folder" and not d.root, "data.kind=folder needs data.root (a folder of images)")
        refuse(d.epochs_per_chunk < 1 or d.gan_epochs_per_chunk < 0,
               f"data.epochs_per_chunk={d.epochs_per_chunk} must be at least 1 and "
               f"data.gan_epochs_per_chunk={d.gan_epochs_per_chunk} at least 0")
        refuse(d.gan_epochs_per_chunk > 0 and not d.videos_per_chunk,
               f"data.gan_epochs_per_chunk={d.gan_epochs_per_chunk} schedules the discriminator within "
               "chunks: set data.videos_per_chunk (chunked video training) too")
        refuse(d.test_chunk is not None and (not d.videos_per_chunk or d.test_chunk < 0),
               f"data.test_chunk={d.test_chunk} holds out one chunk of the training videos: it needs "
               "data.videos_per_chunk and a value of at least 0")
        refuse(d.gan_epochs_per_chunk > 0 and loss.disc_weight == 0,
               f"data.gan_epochs_per_chunk={d.gan_epochs_per_chunk} needs a discriminator "
               "(loss.disc_weight > 0)")
        return self

    def _validate_decoder(self) -> None:
        m, mult = self.model, self.model.decoder_ch_mult
        refuse(m.decoder_ch is not None and m.decoder_ch < 1,
               f"model.decoder_ch={m.decoder_ch} must be positive or null")
        refuse(mult is not None and (len(mult) != len(m.ch_mult) or min(mult) < 1),
               f"model.decoder_ch_mult={mult} must hold {len(m.ch_mult)} positive multipliers, one per "
               f"level of model.ch_mult={m.ch_mult} (the decoder undoes every downsampling), or be null")
        refuse(m.arch == "video3d" and not m.decoder_mirrors_encoder,
               "model.decoder_ch and model.decoder_ch_mult are not available for model.arch=video3d (its "
               "decoder mirrors the encoder); set both to null")
        widths = m.decoder_widths
        refuse(m.arch == "taming" and any(w % min(m.num_groups, w) for w in widths),
               f"model.num_groups={m.num_groups} must divide every decoder width {widths} "
               "(model.decoder_ch * model.decoder_ch_mult)")


class ConfigError(ValueError):
    """An inconsistent or invalid configuration, reported before any training starts."""


def refuse(bad: Any, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` when ``bad`` is true."""
    if bad:
        raise ConfigError(message)


def check_minimum(key: str, value: int | None, low: int) -> None:
    """Raise :class:`ConfigError` when ``value`` (``None`` is accepted) is below ``low``."""
    refuse(value is not None and value < low, f"{key}={value} must be at least {low}")


def to_dict(config: Any) -> dict[str, Any]:
    """Plain ``dict`` of a (nested) config dataclass, for YAML and checkpoints."""
    return dataclasses.asdict(config)


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build a (nested) config dataclass from a plain dict, rejecting unknown keys with the valid choices."""
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} for {cls.__name__}; valid keys: {sorted(hints)}")
    nested = {k for k, v in data.items() if dataclasses.is_dataclass(hints[k]) and isinstance(v, dict)}
    return cls(**{k: from_dict(hints[k], v) if k in nested else v for k, v in data.items()})


def replace_keys(config: Any, changes: dict[str, Any]) -> Any:
    """A copy of the config dataclass with the (nested) keys of ``changes`` replaced, e.g.
    ``{"train": {"max_steps": 3}}``; an unknown key is refused (:func:`from_dict`)."""

    def merge(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
        both = {k for k, v in new.items() if isinstance(v, dict) and isinstance(base.get(k), dict)}
        return {**base, **{k: merge(base[k], v) if k in both else v for k, v in new.items()}}

    return from_dict(type(config), merge(to_dict(config), changes))


def dump_config(config: Any, path: str | Path) -> Path:
    """Write a config dataclass as YAML (the resolved config saved with every run)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    return path


def add_run_config_arguments(parser: Any, cls: type, presets: Any = None) -> None:
    """Add ``--preset NAME`` (``presets``: a :class:`~vqgan.registry.Registry`), ``--config FILE``,
    ``--print-config`` and a dotted option per field of the dataclass ``cls`` to a jsonargparse parser.
    ``--preset`` and ``--config`` apply where they stand: later options override them."""
    import argparse

    from jsonargparse import ActionConfigFile

    class PresetAction(argparse.Action):
        def __call__(self, parser, namespace, value, option_string=None):
            from vqgan.registry import preset_config

            try:
                namespace.update(parser.parse_object(to_dict(preset_config(presets, value)), defaults=False))
            except KeyError as e:
                raise argparse.ArgumentError(self, str(e)) from None
            setattr(namespace, self.dest, value)

    if presets is not None:
        parser.add_argument("--preset", action=PresetAction, metavar="NAME", help="start from a named preset "
                            "(later options override it): " + ", ".join(presets))
    parser.add_argument("--config", action=ActionConfigFile,
                        help="YAML file of options (see configs/); the options after it override it")
    parser.add_argument("--print-config", "--print_config", action="store_true",
                        help="print the resolved configuration as YAML instead of running")
    parser.add_class_arguments(cls, None)


def run_config_from_namespace(cls: type, ns: Any) -> Any:
    """The run config ``cls`` from a parsed jsonargparse namespace; fields not given keep their defaults."""
    names = {f.name for f in dataclasses.fields(cls)}
    return from_dict(cls, {k: v for k, v in ns.as_dict().items() if k in names})


def parse_run_config(
    cls: type, presets: Any, path: str | Path | None, overrides: list[str] | None, preset: str | None
) -> Any:
    """Preset, then YAML file, then dotted ``overrides``, parsed as the command line parses them, for
    :func:`load_config` and the priors'."""
    from jsonargparse import ArgumentParser

    from vqgan.config_checks import describe_parse_error

    # allow_abbrev=False: "--model.d" is not dropout
    parser = ArgumentParser(exit_on_error=False, allow_abbrev=False, print_config=None)
    add_run_config_arguments(parser, cls, presets)
    if path is not None and not Path(path).is_file():
        raise ConfigError(f"config file {path} does not exist")
    args = [*(["--preset", preset] if preset else []), *(["--config", str(path)] if path else []),
            *(overrides or [])]
    try:
        ns = parser.parse_args(args, defaults=False)
    except Exception as e:  # jsonargparse raises argparse.ArgumentError
        where = f" in {path}" if path else ""
        why = describe_parse_error(parser, args, e, cls)
        raise ConfigError(f"invalid configuration{where}: {why}") from None
    return run_config_from_namespace(cls, ns)


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, preset: str | None = None
) -> ExperimentConfig:
    """Load an :class:`ExperimentConfig` the way ``vqgan fit`` does: preset, then YAML file (``configs/``),
    then command-line style ``overrides`` (``["--model.ch", "32", "--train.lr=1e-3"]``). Raises
    :class:`ConfigError` naming the key of an unknown key, a wrong type or an invalid choice."""
    from vqgan.registry import PRESETS

    return parse_run_config(ExperimentConfig, PRESETS, path, overrides, preset)
