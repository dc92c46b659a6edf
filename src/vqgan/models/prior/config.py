"""Typed configuration of stage 2 (model, data, training), set as for stage 1 by YAML files and dotted
overrides; named presets live in :data:`PRIOR_PRESETS`, one more :class:`~vqgan.registry.Registry`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from vqgan.config import TrainerSettings, check_minimum, parse_run_config, refuse
from vqgan.registry import Registry, preset_config


@dataclass
class PriorModelConfig:
    """Prior architecture (nanoGPT's ``GPTConfig`` plus what MaskGIT, flows and conditioning need); a flow
    reads the token map size as the latent map's, ignores ``vocab_size``, ``rope`` and ``bias``, and alone
    uses the fields from ``latent_channels`` on.

    Attributes:
        kind: ``gpt`` (autoregressive), ``maskgit`` (masked token modelling) or ``flow`` (over latents).
        vocab_size: number of codes of the tokenizer (its codebook size).
        token_height: rows of the token map of one image (or of one latent frame of a clip).
        token_width: columns of the token map of one image.
        n_layer: transformer blocks.
        n_head: attention heads.
        n_embd: transformer width.
        dropout: dropout on embeddings, attention and MLP outputs.
        bias: biases in linear layers and LayerNorms.
        rope: rotary position embeddings (Su et al. 2021), not learned ones; per axis over clips (3D RoPE).
        rope_base: RoPE's frequency base.
        num_classes: classes to condition on (0: none), plus a "null" class for guidance and unlabelled data.
        cond_dropout: probability of replacing a label by the null class in training (needed for guidance).
        mlp_ratio: hidden width of the MLP in units of ``n_embd``.
        token_frames: latent frames ``T`` of a clip's ``(T, h, w)`` grid, in raster order (1: images).
        frame_prediction_prob: MaskGIT: share of training clips masked from a random latent frame on only.
        latent_channels: channels of the latents (``N`` of seed 004's projection, or ``embed_dim``).
        patch_size: side of the latent patches that become transformer tokens (DiT, Peebles & Xie 2023).
        time_sampling: ``uniform`` or ``logit_normal``: sigmoid(N(logit_mean, logit_std)) (Esser et al. 2024).
        logit_mean: mean of the logit-normal time distribution (of logit t).
        logit_std: standard deviation of the logit-normal time distribution (of logit t).
        sampler: ODE solver for sampling: ``euler`` or ``heun`` (second order, two evaluations per step).
        sample_steps: ODE steps for samples (validation grids and ``vqgan sample``'s default).
        guidance: classifier-free guidance scale of those samples (1: the conditional model, no guidance).
        snap_to_codes: decode samples after snapping them to the tokenizer's nearest codes.
    """

    kind: Literal["gpt", "maskgit", "flow"] = "gpt"
    vocab_size: int = 1024
    token_height: int = 8
    token_width: int = 8
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    dropout: float = 0.0
    bias: bool = True
    rope: bool = False
    rope_base: float = 10000.0
    num_classes: int = 0
    cond_dropout: float = 0.1
    mlp_ratio: int = 4
    token_frames: int = 1
    frame_prediction_prob: float = 0.0
    latent_channels: int = 4
    patch_size: int = 1
    time_sampling: Literal["uniform", "logit_normal"] = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    sampler: Literal["euler", "heun"] = "heun"
    sample_steps: int = 16
    guidance: float = 1.0
    snap_to_codes: bool = False

    @property
    def num_tokens(self) -> int:
        """Tokens per image or clip (the length of the sequence the prior models)."""
        return self.token_frames * self.token_height * self.token_width

    @property
    def frame_tokens(self) -> int:
        """Tokens per latent frame (``token_height * token_width``)."""
        return self.token_height * self.token_width

    @property
    def token_shape(self) -> tuple[int, ...]:
        """Shape of one sample: ``(h, w)`` for images, ``(T, h, w)`` for clips."""
        hw = (self.token_height, self.token_width)
        return (self.token_frames, *hw) if self.token_frames > 1 else hw

    @property
    def null_class(self) -> int:
        """Index of the null (unconditional) class embedding."""
        return self.num_classes

    def validate(self) -> PriorModelConfig:
        """Raise :class:`ConfigError` naming the first bad ``model.*`` value; returns self."""
        refuse(self.n_embd % self.n_head,
               f"model.n_embd={self.n_embd} must be divisible by model.n_head={self.n_head}")
        hd, p, h, w = self.n_embd // self.n_head, self.patch_size, self.token_height, self.token_width
        refuse(self.rope and hd % 2, f"model.rope needs an even head dimension, got {hd}")
        check_minimum("model.vocab_size", self.vocab_size, 2)
        refuse(self.num_classes < 0, f"model.num_classes={self.num_classes} must be >= 0")
        refuse(not 0.0 <= self.cond_dropout < 1.0,
               f"model.cond_dropout={self.cond_dropout} must be in [0, 1)")
        refuse(min(h, w, self.token_frames) < 1,
               "model.token_height, model.token_width and model.token_frames must be positive")
        refuse(self.rope and self.token_frames > 1 and hd < 6,
               f"model.rope over a (T, h, w) grid needs a head dimension of at least 6 (a frequency pair per "
               f"axis), got {hd}")
        refuse(not 0.0 <= self.frame_prediction_prob <= 1.0,
               f"model.frame_prediction_prob={self.frame_prediction_prob} must be in [0, 1]")
        refuse(self.kind == "flow" and (p < 1 or h % p or w % p),
               f"model.patch_size={p} must divide the latent map {h}x{w}")
        refuse(self.kind == "flow" and min(self.latent_channels, self.sample_steps, self.logit_std) <= 0,
               "model.latent_channels, model.sample_steps and model.logit_std must be positive")
        return self


@dataclass
class PriorDataConfig:
    """Where the token shards come from (written by ``vqgan encode``) and how batches are made.

    Attributes:
        tokens: folder of token shards (``--tokens`` on the command line overrides it).
        val_tokens: folder of validation shards (``None``: ``TOKENS/val`` if it exists, else held-out maps).
        val_fraction: share of the maps held out for validation when there is no validation folder.
        batch_size: training batch size (per process).
        val_batch_size: validation batch size (``None``: ``batch_size``).
        num_workers: data loader worker processes.
        projection: ``kind: flow``: a ``vqgan fit-projection`` folder (seed 004's option A) for the latents.
    """

    tokens: str | None = None
    val_tokens: str | None = None
    val_fraction: float = 0.05
    batch_size: int = 32
    val_batch_size: int | None = None
    num_workers: int = 0
    projection: str | None = None


@dataclass
class PriorTrainConfig(TrainerSettings):
    """Stage-2 training: :class:`~vqgan.config.TrainerSettings` (AdamW, warm-up, cosine decay) and samples.

    Attributes:
        num_samples: maps sampled after every validation for the code-usage histogram (and an image grid).
        sample_temperature: softmax temperature of those maps.
        sample_top_k: keep the k most likely codes when sampling them (``None``: all).
        sample_top_p: nucleus sampling mass for them (``None``: off).
        maskgit_steps: MaskGIT decoding steps for those maps.
    """

    max_steps: int = 2000
    lr: float = 3e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.01
    warmup_steps: int = 100
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    monitor: str = "val/loss"
    monitor_mode: Literal["max", "min"] = "min"
    num_samples: int = 16
    sample_temperature: float = 1.0
    sample_top_k: int | None = None
    sample_top_p: float | None = None
    maskgit_steps: int = 8


@dataclass
class PriorExperimentConfig:
    """A whole stage-2 run.

    Attributes:
        name: name of the run.
        model: the prior.
        data: the token shards.
        train: optimisation, validation, checkpoints and hardware.
    """

    name: str = "prior"
    model: PriorModelConfig = field(default_factory=PriorModelConfig)
    data: PriorDataConfig = field(default_factory=PriorDataConfig)
    train: PriorTrainConfig = field(default_factory=PriorTrainConfig)

    def validate(self) -> PriorExperimentConfig:
        self.model.validate()
        self.train.validate()
        refuse(self.data.batch_size < 1, f"data.batch_size={self.data.batch_size} must be positive")
        return self


def load_prior_config(
    path: str | Path | None = None, overrides: list[str] | None = None, preset: str | None = None
) -> PriorExperimentConfig:
    """Preset, then YAML file, then dotted overrides (``["--model.n_layer", "2"]``), as ``vqgan fit-prior``."""
    return parse_run_config(PriorExperimentConfig, PRIOR_PRESETS, path, overrides, preset)


PRIOR_PRESETS: Registry[Callable[[], PriorExperimentConfig]] = Registry("prior preset")
register_prior_preset = PRIOR_PRESETS.register  # @register_prior_preset(name, help) on ``fn() -> config``
list_prior_presets = PRIOR_PRESETS.names


def get_prior_preset(name: str) -> PriorExperimentConfig:
    """A fresh copy of a prior preset, named after it."""
    return preset_config(PRIOR_PRESETS, name)


def _tiny(batch_size: int, **model) -> Callable[[], PriorExperimentConfig]:
    """The preset of a tiny prior for tests: 2 layers of width 32 (``model`` sets the rest), 4 steps."""
    return lambda: PriorExperimentConfig(
        model=PriorModelConfig(n_layer=2, n_head=2, n_embd=32, **model),
        data=PriorDataConfig(batch_size=batch_size, val_fraction=0.25),
        train=PriorTrainConfig(max_steps=4, lr=3e-3, warmup_steps=0, val_every_n_steps=2, log_every_n_steps=1,
                               num_samples=4, maskgit_steps=4),
    )


# The tiny presets for tests, one per prior kind (and per kind over clips): name -> (help, batch, model).
_CLIP = dict(token_frames=3, token_height=4, token_width=4, rope=True, num_classes=10)
_TINY_PRESETS = {
    "test-gpt": ("tiny class-conditional GPT prior for tests (2 layers, 32 wide, RoPE)", 8,
                 dict(kind="gpt", vocab_size=32, rope=True, num_classes=9)),
    "test-maskgit": ("tiny class-conditional MaskGIT prior for tests (2 layers, 32 wide)", 8,
                     dict(kind="maskgit", vocab_size=32, num_classes=9)),
    "test-flow": ("tiny class-conditional flow-matching DiT for tests (2 layers, 32 wide)", 8,
                  dict(kind="flow", latent_channels=8, num_classes=9, sample_steps=4)),
    "test-video-gpt": ("tiny class-conditional GPT prior over (3, 4, 4) clip token grids (3D RoPE)", 4,
                       dict(kind="gpt", vocab_size=32, **_CLIP)),
    "test-video-maskgit": ("tiny class-conditional MaskGIT prior over (3, 4, 4) clip token grids", 4,
                           dict(kind="maskgit", vocab_size=32, frame_prediction_prob=0.5, **_CLIP)),
}
for _name, (_help, _batch, _model) in _TINY_PRESETS.items():
    register_prior_preset(_name, _help)(_tiny(_batch, **_model))


def _quickstart(**model) -> PriorExperimentConfig:
    """A CPU-sized prior (4 layers of width 128) over the quick-start tokenizer's 8x8 maps of 9 classes."""
    return PriorExperimentConfig(
        model=PriorModelConfig(n_layer=4, n_head=4, n_embd=128, num_classes=9, **model),
        data=PriorDataConfig(batch_size=64),
        train=PriorTrainConfig(max_steps=1500, lr=1e-3, warmup_steps=100, val_every_n_steps=500),
    )


@register_prior_preset("quickstart-gpt", "GPT prior over the quickstart tokenizer's 8x8 codes (CPU-sized)")
def _quickstart_gpt() -> PriorExperimentConfig:
    """Autoregressive GPT prior (raster order) over the quick-start tokenizer's 8x8 codes, class-conditional
    on the built-in photos (9 classes) with classifier-free guidance; CPU-sized, about 1.1M parameters.
    model.vocab_size, token_height/width and num_classes are taken from the token folder at training time.
    Usage: vqgan fit-prior --config configs/prior_gpt.yaml --tokens TOKENS --run-dir RUN [--train.max_steps N]
    """
    return _quickstart(kind="gpt", dropout=0.1, rope=True)


@register_prior_preset("quickstart-maskgit", "MaskGIT prior over the quickstart tokenizer's 8x8 codes (CPU-sized)")
def _quickstart_maskgit() -> PriorExperimentConfig:
    """MaskGIT prior (bidirectional, cosine mask schedule) over the quick-start tokenizer's 8x8 codes, as
    configs/prior_gpt.yaml otherwise (class-conditional, about 1.1M parameters, sizes from the token folder).
    Usage: vqgan fit-prior --config configs/prior_maskgit.yaml --tokens TOKENS --run-dir RUN"""
    return _quickstart(kind="maskgit", dropout=0.1)


@register_prior_preset("quickstart-flow", "flow-matching DiT over the quickstart tokenizer's 8x8 latents (CPU-sized)")
def _quickstart_flow() -> PriorExperimentConfig:
    """Flow-matching prior (rectified flow, a DiT with adaLN-Zero; Heun sampler, 16 steps: 32 network
    evaluations per sample) over the quick-start tokenizer's 8x8 continuous latents, the size of the GPT and
    MaskGIT presets; latent channels, map size and classes come from the latent folder (after
    data.projection, seed 004's option A, when one is given).
    Usage: vqgan encode --ckpt TOKENIZER --what continuous --output LATENTS
           vqgan fit-prior --config configs/prior_flow.yaml --tokens LATENTS --run-dir RUN [--train.max_steps N]
    """
    return _quickstart(kind="flow", latent_channels=32, sampler="heun", sample_steps=16)


@register_prior_preset("moving-digits-video-gpt", "class-conditional GPT over moving-digits clip tokens (configs/prior_video_digits.yaml)")
def _moving_digits_video_gpt() -> PriorExperimentConfig:
    """Class-conditional GPT prior over moving-digits clips (one digit per clip, 8 frames of 16x16, tokenized
    frame by frame by a 16x16 f4 image tokenizer with 256 codes, or by a causal video3d tokenizer): 8 x 4 x 4
    = 128 tokens in raster order over time, then space, with RoPE per axis (t, y, x). The class is the digit;
    labels are dropped with probability 0.1 for classifier-free guidance; about 0.86M parameters; sizes and
    classes come from the token folder. Usage (docs/video/README.md has the whole run, with timings):
      vqgan encode --ckpt TOKENIZER --output TOKENS/train --data.kind moving_digits --data.num_digits 1 ...
      vqgan fit-prior --config configs/prior_video_digits.yaml --tokens TOKENS --run-dir RUN
    --model.kind maskgit: MaskGIT instead (--model.frame_prediction_prob 0.5 adds frame prediction)."""
    return PriorExperimentConfig(
        model=PriorModelConfig(kind="gpt", vocab_size=256, token_frames=8, token_height=4, token_width=4,
                               n_layer=4, n_head=4, n_embd=128, dropout=0.1, rope=True, num_classes=10),
        data=PriorDataConfig(batch_size=32),
        train=PriorTrainConfig(max_steps=1500, lr=1e-3, warmup_steps=50, val_every_n_steps=250,
                               num_samples=10, maskgit_steps=12),
    )
