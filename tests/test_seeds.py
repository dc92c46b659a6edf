"""Every seed system as its own document states it (../shared/seeds/, summarised in docs/seeds.md).

Each test writes out the numbers its seed's document states, citing the section, loads the config file a user of
that seed picks, builds the FULL-SIZE model on the meta device (shapes only, no memory, no arithmetic) and reads
the widths and attention resolutions off a traced forward pass. Which VQ term ``beta`` weights is measured through
the gradients a real quantizer gives fixed tensors, and the loss weights through the loss on fixed tensors, not by
reading the config fields that claim them.

A convolution's width is its number of output channels (its filters) at the resolution of its output: the
decoder's first conv reads the 256-channel latents (seed 004's "Input: 256-channel quantized latents") and is
128 wide.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from vqgan.config import ConfigError, ExperimentConfig, load_config
from vqgan.layers import AttnBlock, ResnetBlock
from vqgan.losses import VQGANLoss, disc_factor, hinge_d_loss
from vqgan.models import PatchDiscriminator, build_model
from vqgan.quantizers import build_quantizer
from vqgan.quantizers.base import flatten_latents

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


# -- what a traced forward pass shows ------------------------------------------------------------------------------
@dataclass
class Call:
    name: str
    module: nn.Module
    in_channels: int
    out_channels: int
    in_res: int
    out_res: int


def trace(cfg: ExperimentConfig) -> tuple[nn.Module, list[Call]]:
    """Build the full-size model on the meta device and record every conv, residual block and attention block
    of one forward pass, with its input and output widths and resolutions."""
    with torch.device("meta"):
        model = build_model(cfg.model).eval()
    calls: list[Call] = []
    kinds = (nn.Conv2d, nn.ConvTranspose2d, ResnetBlock, AttnBlock)
    for name, module in model.named_modules():
        if isinstance(module, kinds):
            module.register_forward_hook(
                lambda m, i, o, n=name: calls.append(Call(n, m, i[0].shape[1], o.shape[1], i[0].shape[-1], o.shape[-1]))
            )
    m = cfg.model
    with torch.no_grad():
        out = model(torch.empty(1, m.in_channels, m.resolution, m.resolution, device="meta"))
    assert tuple(out.reconstruction.shape) == (1, m.in_channels, m.resolution, m.resolution)
    return model, calls


def conv_widths(calls: list[Call], part: str, skip: tuple[str, ...] = ()) -> dict[int, int]:
    """Widest conv of ``part`` (encoder/decoder) at each output resolution."""
    widths: dict[int, int] = {}
    for c in calls:
        if c.name.startswith(part + ".") and isinstance(c.module, (nn.Conv2d, nn.ConvTranspose2d)) and c.name not in skip:
            widths[c.out_res] = max(widths.get(c.out_res, 0), c.out_channels)
    return widths


def block_widths(calls: list[Call], part: str) -> dict[int, int]:
    """Width of the residual blocks of ``part`` at each resolution (they must agree within a resolution)."""
    widths: dict[int, set[int]] = {}
    for c in calls:
        if c.name.startswith(part + ".") and isinstance(c.module, ResnetBlock):
            widths.setdefault(c.out_res, set()).add(c.out_channels)
    assert all(len(w) == 1 for w in widths.values()), widths
    return {r: w.pop() for r, w in widths.items()}


def attention_resolutions(calls: list[Call], part: str) -> set[int]:
    return {c.in_res for c in calls if c.name.startswith(part + ".") and isinstance(c.module, AttnBlock)}


def vq_term_weights(cfg: ExperimentConfig) -> tuple[float, float]:
    """``(w_encoder, w_codebook)`` of the quantizer's loss ``w_encoder ||z - sg[e]||^2 + w_codebook ||e - sg[z]||^2``,
    measured from the gradients one backward pass of its loss gives fixed latents and a fixed codebook (a codebook
    with no gradient, as EMA's, has ``w_codebook = 0``: its codes move by averages, not by this loss)."""
    torch.manual_seed(0)
    q = build_quantizer(cfg.model.quantizer, cfg.model.embed_dim).eval()
    with torch.no_grad():
        q.embedding.weight.copy_(torch.randn_like(q.embedding.weight))
    z = torch.randn(2, cfg.model.embed_dim, 3, 3, requires_grad=True)
    out = q(z)
    out.loss.backward()
    flat, _ = flatten_latents(z.detach())
    codes = q.embedding.weight.detach()[out.indices.reshape(-1)]
    n = flat.numel()
    # d/dz of w ||z - sg[e]||^2 (a mean over n numbers) is w * 2 (z - e) / n; d/de of w ||e - sg[z]||^2 is the sum
    # of w * 2 (e - z) / n over the latents assigned to e.
    enc_dir = 2 * (flat - codes) / n
    grad_z, _ = flatten_latents(z.grad)
    w_enc = float((grad_z * enc_dir).sum() / enc_dir.pow(2).sum())
    torch.testing.assert_close(grad_z, w_enc * enc_dir)  # nothing else moves the encoder
    grad_e = q.embedding.weight.grad
    if grad_e is None:
        return w_enc, 0.0
    cb_dir = torch.zeros_like(grad_e).index_add_(0, out.indices.reshape(-1), 2 * (codes - flat) / n)
    w_cb = float((grad_e * cb_dir).sum() / cb_dir.pow(2).sum())
    torch.testing.assert_close(grad_e, w_cb * cb_dir)
    return w_enc, w_cb


def adversarial_weights(cfg: ExperimentConfig, step: int) -> tuple[float, float]:
    """``(generator, discriminator)`` weights of the adversarial terms at ``step``, measured on fixed tensors through
    the loss with the factor the training module computes (:func:`disc_factor` of the config's schedule)."""
    c = dataclasses.replace(cfg.loss, perceptual="none")
    loss = VQGANLoss(c)
    factor = disc_factor(step, c.disc_start, c.disc_ramp_steps, c.disc_weight_max)
    x = torch.zeros(1, 3, 4, 4)
    rec = torch.full((1, 3, 4, 4), 0.5, requires_grad=True)
    mask = torch.ones(1, 1, 4, 4)
    logits_fake, logits_real = torch.tensor([[0.3, -0.7]]), torch.tensor([[0.2, 1.4]])
    g = loss.generator_loss(x, rec, torch.tensor(0.0), logits_fake, factor, mask)
    nll = loss.nll(x, rec, mask).loss
    g_adv = -logits_fake.mean()  # hinge generator loss
    w_g = float((g.loss - nll) / g_adv)
    d = loss.discriminator_loss(logits_real, logits_fake, factor).loss
    w_d = float(d / hinge_d_loss(logits_real, logits_fake))
    return w_g, w_d


# -- seed 000: VQGAN for UCF101 --------------------------------------------------------------------------------------
def test_seed000_ucf101():
    # "Full Training": --batch_size 64 --hidden_dims 64 128 256 512 --latent_dim 32 --num_embeddings 512
    # --perceptual_weight 0.1 --adv_weight 0.1; "Key Parameters": downsample_factor.
    # "Implementation Details": EMA codebook updates, dead codes restarted; "Architecture": transposed convolutions
    # for upsampling, attention in the deeper layers of encoder and decoder, spectral-norm PatchGAN.
    hidden_dims, latent_dim, num_embeddings, batch_size = [64, 128, 256, 512], 32, 512, 64
    perceptual_weight, adv_weight = 0.1, 0.1
    cfg = load_config(CONFIGS / "ucf101_vqgan.yaml").validate()
    m = cfg.model
    model, calls = trace(cfg)
    res = [m.resolution // 2**i for i in range(len(hidden_dims))]
    assert block_widths(calls, "encoder") == dict(zip(res, hidden_dims, strict=True))
    assert block_widths(calls, "decoder") == dict(zip(res, hidden_dims, strict=True))
    assert any(isinstance(c.module, nn.ConvTranspose2d) for c in calls if c.name.startswith("decoder."))
    assert attention_resolutions(calls, "encoder") == attention_resolutions(calls, "decoder") == {res[-1]}
    assert tuple(model.quantize.codebook.shape) == (num_embeddings, latent_dim)
    assert model.encoder.conv_out.out_channels == latent_dim
    # downsample_factor: stated, and checked against the architecture.
    latent_res = next(c.out_res for c in calls if c.name == "quant_conv")
    assert m.downsample_factor == 2 ** (len(hidden_dims) - 1) == m.resolution // latent_res
    with pytest.raises(ConfigError, match="model.downsample_factor=8 differs"):
        load_config(CONFIGS / "ucf101_vqgan.yaml", ["--model.ch_mult", "[1,2,4]"]).validate()
    # EMA codebook with restarts: the loss moves the encoder only (beta is not stated: the VQ-VAE paper's 0.25).
    assert m.quantizer.kind == "ema" and m.quantizer.dead_code_threshold > 0
    assert vq_term_weights(cfg) == pytest.approx((0.25, 0.0))
    # Loss weights; the adversarial weight is plain (no adaptive weight). Its schedule (reconstruction epochs then
    # GAN epochs per chunk) is the schedule's own test.
    assert (cfg.loss.perceptual, cfg.loss.perceptual_weight) == ("lpips", perceptual_weight)
    assert not cfg.loss.adaptive_weight
    w_g, _ = adversarial_weights(cfg, 10**9)
    assert w_g == pytest.approx(adv_weight)
    with torch.device("meta"):
        disc = PatchDiscriminator(cfg.discriminator, m.in_channels)
    assert any("weight_orig" in n or "parametrizations" in n for n, _ in disc.named_parameters())
    assert cfg.data.batch_size == batch_size


# -- seed 001: VQGAN (taming-transformers) ---------------------------------------------------------------------------
def test_seed001_taming_vqgan():
    # "Summary"/"Methodology": the VQGAN of Esser et al. 2021 (codebook, encoder, decoder, discriminator, LPIPS,
    # then a transformer). The document states no sizes; configs/ffhq_vqgan_f16.yaml is taming's f16 FFHQ model,
    # whose module names (encoder.down.N.block.M, decoder.up..., quantize.embedding) load taming's checkpoints.
    cfg = load_config(CONFIGS / "ffhq_vqgan_f16.yaml").validate()
    m = cfg.model
    model, calls = trace(cfg)
    assert m.arch == "taming" and m.decoder_mirrors_encoder and m.output_activation == "none"
    enc, dec = block_widths(calls, "encoder"), block_widths(calls, "decoder")
    assert enc == dec == {256: 128, 128: 128, 64: 256, 32: 256, 16: 512}  # taming's ch 128, ch_mult 1 1 2 2 4
    assert attention_resolutions(calls, "encoder") == attention_resolutions(calls, "decoder") == {16}
    assert tuple(model.quantize.codebook.shape) == (1024, 256)
    # The VQ-VAE paper's loss (beta 0.25 on the encoder term), not taming's legacy placement.
    assert vq_term_weights(cfg) == pytest.approx((0.25, 1.0))
    assert (cfg.loss.reconstruction, cfg.loss.perceptual, cfg.loss.adaptive_weight) == ("l1", "lpips", True)
    assert adversarial_weights(cfg, cfg.loss.disc_start - 1) == (0.0, 0.0)
    assert cfg.loss.disc_weight > 0 and cfg.discriminator.n_layers == 3


# -- seed 002: an unofficial VQGAN on FFHQ 256 ---------------------------------------------------------------------
def test_seed002_ffhq():
    # "Introduction": a symmetric autoencoder with attentive blocks; l1 reconstruction + LPIPS + patch-wise GAN
    # loss; the vanilla VQ-VAE quantizer (and an EMA version); FFHQ 256x256. "Insights": 1024 codes.
    resolution, codebook_size = 256, 1024
    cfg = load_config(CONFIGS / "ffhq_vqgan_f16.yaml").validate()
    model, calls = trace(cfg)
    assert cfg.model.resolution == cfg.data.resolution == resolution
    assert block_widths(calls, "encoder") == block_widths(calls, "decoder")  # symmetric
    assert attention_resolutions(calls, "encoder") and attention_resolutions(calls, "decoder")
    assert model.quantize.codebook_size == codebook_size
    # Vanilla VQ: the loss moves both the encoder and the codebook; the EMA version is an override.
    assert vq_term_weights(cfg)[1] > 0
    ema = load_config(CONFIGS / "ffhq_vqgan_f16.yaml", ["--model.quantizer.kind", "ema"]).validate()
    assert vq_term_weights(ema)[1] == 0.0
    assert cfg.loss.reconstruction == "l1" and cfg.loss.perceptual == "lpips"
    with torch.device("meta"):
        disc = PatchDiscriminator(cfg.discriminator, 3)
    assert sum(isinstance(mod, nn.Conv2d) and mod.stride == (2, 2) for mod in disc.modules()) == cfg.discriminator.n_layers


# -- seed 003: VQ-VAE on CelebA ----------------------------------------------------------------------------------------
def test_seed003_celeba_vqvae():
    # "Model Parameters": input_dim 3, hidden_dim 256, embedding_dim 128, num_resblocks 4, num_embeddings 512,
    # learning_rate 2.25e-4. "Data Preparation": 128x128. "Refined Loss Computation":
    # loss = reconstruction (MSE) + mean((sg[q] - z)^2) + 0.25 * mean((sg[z] - q)^2).
    input_dim, hidden_dim, embedding_dim, num_resblocks, num_embeddings, lr = 3, 256, 128, 4, 512, 2.25e-4
    resolution = 128
    cfg = load_config(CONFIGS / "celeba_vqvae.yaml").validate()
    model, calls = trace(cfg)
    assert cfg.model.in_channels == input_dim and cfg.model.resolution == cfg.data.resolution == resolution
    assert max(conv_widths(calls, "encoder").values()) == hidden_dim
    assert max(conv_widths(calls, "decoder").values()) == hidden_dim
    residual = [type(mod).__name__ == "_Residual" for mod in model.encoder.modules()]
    assert sum(residual) == num_resblocks == sum(type(mod).__name__ == "_Residual" for mod in model.decoder.modules())
    assert any(isinstance(c.module, nn.ConvTranspose2d) for c in calls if c.name.startswith("decoder."))
    assert model.encoder.net[-1].out_channels == embedding_dim
    assert tuple(model.quantize.codebook.shape) == (num_embeddings, embedding_dim)
    assert attention_resolutions(calls, "encoder") == attention_resolutions(calls, "decoder") == set()
    # Weight 1 on the term that moves the encoder, 0.25 on the one that moves the codebook.
    assert vq_term_weights(cfg) == pytest.approx((1.0, 0.25))
    assert (cfg.loss.reconstruction, cfg.loss.reconstruction_weight, cfg.loss.perceptual) == ("l2", 1.0, "none")
    assert cfg.loss.disc_weight == 0.0  # no GAN
    assert cfg.train.lr == lr


# -- seed 004: smoke VQ-VAE and VQGAN ----------------------------------------------------------------------------------
def _check_seed004_model(cfg: ExperimentConfig) -> None:
    # "Architecture Specifications": 64x64 RGB; encoder 64 -> 32 -> 16 -> 8 with 128 -> 256 -> 512 -> 1024, attention
    # at 8x8, 256-channel latents at 8x8; decoder from 256-channel latents at 8x8, attention at 8x8, 8 -> 16 -> 32
    # -> 64 with 128 -> 64 -> 32 -> 16, tanh output. "Vector Quantizer": 1024 codes of dimension 256, commitment
    # cost 0.1; "VQ Loss: Commitment loss + codebook loss" (a codebook learned by gradients).
    encoder = {64: 128, 32: 256, 16: 512, 8: 1024}
    decoder = {8: 128, 16: 64, 32: 32, 64: 16}
    latent_channels, latent_res, codebook_size, commitment = 256, 8, 1024, 0.1
    assert cfg.model.resolution == cfg.data.resolution == 64
    model, calls = trace(cfg)
    assert conv_widths(calls, "encoder", skip=("encoder.conv_out",)) == encoder
    assert model.encoder.conv_out.out_channels == latent_channels
    # Every conv of the decoder is at most as wide as its resolution's width, up to the RGB output conv.
    assert conv_widths(calls, "decoder", skip=("decoder.conv_out",)) == decoder
    conv_in = next(c for c in calls if c.name == "decoder.conv_in")
    assert (conv_in.in_channels, conv_in.in_res) == (latent_channels, latent_res)
    assert model.decoder.conv_out.out_channels == 3
    assert attention_resolutions(calls, "encoder") == attention_resolutions(calls, "decoder") == {latent_res}
    assert tuple(model.quantize.codebook.shape) == (codebook_size, latent_channels)
    assert vq_term_weights(cfg) == pytest.approx((commitment, 1.0))
    q = cfg.model.quantizer
    assert (q.kind, q.kmeans_init, q.dead_code_threshold) == ("vq", False, 0.0)
    # tanh output, measured on a real (narrow) copy of the model: decode() squashes what the decoder produces.
    small = dataclasses.replace(cfg.model, ch=8, decoder_ch=4, z_channels=8, embed_dim=8, num_groups=4,
                                quantizer=dataclasses.replace(q, codebook_size=16))
    torch.manual_seed(0)
    tiny = build_model(small).eval()
    with torch.no_grad():
        tiny.decoder.conv_out.weight.mul_(100.0)  # pre-activation far outside [-1, 1]
        codes = torch.randn(1, 8, 8, 8)
        raw = tiny.decoder(tiny.post_quant_conv(codes))
        torch.testing.assert_close(tiny.decode(codes), torch.tanh(raw))
    assert raw.abs().max() > 2 and tiny.decode(codes).abs().max() <= 1


def test_seed004_smoke_vqvae():
    # "VQVAE / Training Script": --batch-size 64 --epochs 100; loss = reconstruction (masked MSE) + VQ loss.
    cfg = load_config(CONFIGS / "smoke_vqvae.yaml").validate()
    _check_seed004_model(cfg)
    assert cfg.data.batch_size == 64
    assert (cfg.loss.reconstruction, cfg.loss.perceptual, cfg.loss.disc_weight) == ("masked_l2", "none", 0.0)
    assert cfg.data.kind == "smoke"  # the masks of the masked loss come with the data


def test_seed004_smoke_vqgan():
    # "VQGAN / Training Script" and "Key Arguments": --batch-size 32 --epochs 100 --lr 1e-4 --lr-disc 1e-4
    # --perceptual-weight 1.0 --adversarial-weight 0.5 --disc-start 10000, --disc-weight-max 0.75. "Discriminator":
    # PatchGAN, 3 layers, 64 base filters. "Perceptual Loss": VGG16 relu1_2..relu4_3, equal weights
    # (tests/test_losses.py checks the taps).
    batch_size, lr, lr_disc, perceptual_weight, adversarial_weight, disc_start, disc_weight_max = (
        32, 1e-4, 1e-4, 1.0, 0.5, 10000, 0.75)
    cfg = load_config(CONFIGS / "smoke_vqgan.yaml").validate()
    _check_seed004_model(cfg)
    assert cfg.data.batch_size == batch_size
    assert (cfg.train.lr, cfg.train.lr_disc) == (lr, lr_disc)
    # The perceptual weight, through the loss (a random VGG16: no weights file in the tests).
    loss = VQGANLoss(dataclasses.replace(cfg.loss, random_backbone=True))
    g = torch.Generator().manual_seed(0)
    x, rec = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1, torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
    nll = loss.nll(x, rec, torch.ones(1, 1, 64, 64))
    assert cfg.loss.perceptual == "vgg" and nll.logs["perceptual"] > 0
    torch.testing.assert_close(nll.loss - nll.logs["rec"], perceptual_weight * nll.logs["perceptual"])
    # Adversarial schedule: nothing before --disc-start, then at once (no ramp) the plain weight 0.5 (no adaptive
    # weight) times 0.75, taming's disc_weight * disc_factor; the discriminator's loss is weighted by 0.75.
    assert not cfg.loss.adaptive_weight
    assert adversarial_weights(cfg, disc_start - 1) == (0.0, 0.0)
    for step in (disc_start, disc_start + 1, 10 * disc_start):
        assert adversarial_weights(cfg, step) == pytest.approx((adversarial_weight * disc_weight_max, disc_weight_max))
    with torch.device("meta"):
        disc = PatchDiscriminator(cfg.discriminator, 3)
    convs = [mod for mod in disc.modules() if isinstance(mod, nn.Conv2d)]
    assert convs[0].out_channels == 64 and sum(c.stride == (2, 2) for c in convs) == 3



# -- the options the seeds needed -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides,match",
    [
        (["--model.quantizer.kind", "ema", "--model.quantizer.beta_on", "codebook"], "kind=ema has no codebook loss"),
        (["--model.quantizer.kind", "fsq", "--model.quantizer.beta_on", "codebook"], "kind=fsq has no codebook loss"),
        (["--model.quantizer.kind", "residual", "--model.quantizer.stage_kind", "ema", "--model.quantizer.beta_on",
          "codebook"], "stage_kind=ema has no codebook loss"),
        (["--model.decoder_ch_mult", "[1,2]"], "must hold 3 positive multipliers"),
        (["--model.decoder_ch", "0"], "model.decoder_ch=0 must be positive"),
        (["--model.downsample_factor", "8"], "model.downsample_factor=8 differs from the architecture's factor 4"),
        (["--model.decoder_ch", "6", "--model.num_groups", "4"], "must divide every decoder width"),
    ],
)
def test_new_options_refuse_what_they_cannot_do(overrides, match):
    cfg = load_config(CONFIGS / "quickstart.yaml", overrides)
    with pytest.raises(ConfigError, match=match):
        cfg.validate()


def test_beta_on_codebook_for_simvq_and_residual_vq():
    torch.manual_seed(0)
    z = torch.randn(2, 8, 3, 3)
    for kind in ("simvq", "residual"):
        cfg = load_config(CONFIGS / "quickstart.yaml", [
            "--model.quantizer.kind", kind, "--model.quantizer.stage_kind", "vq", "--model.quantizer.beta_on", "codebook",
            "--model.quantizer.kmeans_init", "false", "--model.quantizer.dead_code_threshold", "0", "--model.embed_dim",
            "8", "--model.quantizer.codebook_size", "16"]).validate()
        out = build_quantizer(cfg.model.quantizer, 8).eval()(z)
        key = "" if kind == "simvq" else "_stage0"
        expected = out.losses[f"commitment{key}"] + 0.25 * out.losses[f"codebook{key}"]
        torch.testing.assert_close(out.loss, expected)
        assert out.losses[f"codebook{key}"] > 0  # the two terms have equal values: the test tells the weights apart


def test_mirrored_decoder_is_unchanged_and_video_refuses_own_widths():
    """The default (no decoder widths of its own) keeps taming's decoder parameter for parameter, so taming
    checkpoints still load; the 3D video tokenizer has no decoder widths of its own and says so."""
    cfg = load_config(CONFIGS / "quickstart.yaml").model
    own = dataclasses.replace(cfg, decoder_ch=cfg.ch, decoder_ch_mult=list(cfg.ch_mult))
    with torch.device("meta"):
        mirror, narrowing = build_model(cfg), build_model(own)
    shapes = {k: tuple(v.shape) for k, v in mirror.decoder.state_dict().items()}
    assert shapes["up.1.upsample.conv.weight"] == (64, 64, 3, 3)  # taming: the upsampling conv keeps the width
    narrow = {k: tuple(v.shape) for k, v in narrowing.decoder.state_dict().items()}
    assert narrow["up.1.upsample.conv.weight"] == (32, 64, 3, 3)  # own widths: it narrows to the next level's
    with pytest.raises(ConfigError, match="not available for model.arch=video3d"):
        load_config(CONFIGS / "moving_digits_video.yaml", ["--model.decoder_ch", "8"]).validate()
