"""Autoencoders: every registered stage-1 preset builds, runs forward/backward, and its codes decode to the same
reconstruction; the full-size seed models run one training batch."""

import pytest
import torch

from vqgan import VQModel
from vqgan.config import ExperimentConfig
from vqgan.models import PatchDiscriminator
from vqgan.registry import get_preset, list_presets


def _stage1_presets(prefix=""):
    names = []
    for n in list_presets(prefix):
        cfg = get_preset(n)
        if isinstance(cfg, ExperimentConfig) and cfg.model.arch in ("taming", "resnet"):
            names.append(n)
    return names


def _batch(cfg, b=2):
    m = cfg.model
    return torch.rand(b, m.in_channels, m.resolution, m.resolution) * 2 - 1


@pytest.mark.parametrize("name", _stage1_presets("test-"))
def test_tiny_presets_shapes_and_round_trip(name):
    cfg = get_preset(name)
    model = VQModel(cfg.model)
    x = _batch(cfg)
    out = model(x)  # training mode: initialises the codebook
    assert out.reconstruction.shape == x.shape
    h = cfg.model.latent_resolution
    assert out.latents.shape == (2, cfg.model.embed_dim, h, h)
    assert out.indices.shape[:3] == (2, h, h)
    assert out.indices.dtype == torch.long
    assert out.vq_loss.dim() == 0 and torch.isfinite(out.vq_loss)
    (out.reconstruction.square().mean() + out.vq_loss).backward()
    assert next(model.encoder.parameters()).grad is not None  # straight-through reaches the encoder
    model.eval()
    with torch.no_grad():
        enc = model.encode(x)
        ref = model(x).reconstruction
        torch.testing.assert_close(model.decode_codes(enc.indices), ref, rtol=0, atol=1e-5)
        torch.testing.assert_close(model.decode(enc.quantized), ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["test-taming", "test-resnet"])
def test_inference_path_matches_autograd_path(name):
    """Without autograd the residual blocks work in place; the results are bitwise those of the autograd path and
    the caller's input is left untouched."""
    cfg = get_preset(name)
    torch.manual_seed(0)
    model = VQModel(cfg.model)
    x = _batch(cfg, b=3)
    model(x)  # k-means initialisation
    model.eval()
    with torch.enable_grad():
        ref_latents = model.encode_latents(x)
        ref_rec = model(x).reconstruction
    x_before = x.clone()
    with torch.inference_mode():
        latents = model.encode_latents(x)
        rec = model(x).reconstruction
    torch.testing.assert_close(latents, ref_latents.detach(), rtol=0, atol=0)
    torch.testing.assert_close(rec, ref_rec.detach(), rtol=0, atol=0)
    assert torch.equal(x, x_before)


def test_grayscale_model():
    cfg = get_preset("test-taming")
    cfg.model.in_channels = 1
    model = VQModel(cfg.model)
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    assert model(x).reconstruction.shape == x.shape


@pytest.mark.parametrize("name", _stage1_presets("seed"))
def test_full_size_seed_models_train_one_batch(name):
    """The full-size architecture of every seed preset: one forward and backward pass on one image."""
    torch.manual_seed(0)
    cfg = get_preset(name)
    model = VQModel(cfg.model)
    x = _batch(cfg, b=1)
    out = model(x)
    loss = (out.reconstruction - x).abs().mean() + out.vq_loss
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert out.reconstruction.shape == x.shape
    if cfg.loss.disc_weight > 0:
        disc = PatchDiscriminator(cfg.discriminator, cfg.model.in_channels)
        logits = disc(out.reconstruction.detach())
        assert logits.shape[:2] == (1, 1) and logits.shape[-1] > 1


def test_seed_architectures_match_the_seeds():
    s0 = get_preset("seed000-ucf101-vqgan").model
    assert [s0.ch * m for m in s0.ch_mult] == [64, 128, 256, 512]
    assert s0.embed_dim == 32 and s0.quantizer.codebook_size == 512
    s1 = get_preset("seed001-taming-f16-1024").model
    assert s1.spatial_factor == 16 and s1.quantizer.codebook_size == 1024 and s1.resolution == 256
    s3 = get_preset("seed003-celeba-vqvae")
    assert s3.model.arch == "resnet" and s3.model.ch == 256 and s3.model.num_res_blocks == 4
    assert (s3.model.quantizer.codebook_size, s3.model.embed_dim, s3.train.lr) == (512, 128, 2.25e-4)
    s4 = get_preset("seed004-smoke-vqgan")
    assert s4.model.latent_resolution == 8 and s4.model.attn_resolutions == [8]
    assert (s4.model.quantizer.codebook_size, s4.model.embed_dim, s4.model.quantizer.beta) == (1024, 256, 0.1)
    assert [s4.model.ch * m for m in s4.model.ch_mult] == [128, 256, 512, 1024]


def test_spectral_norm_discriminator():
    cfg = get_preset("seed000-ucf101-vqgan").discriminator
    disc = PatchDiscriminator(cfg, 3)
    conv = disc.main[0]
    assert hasattr(conv, "parametrizations")  # spectral norm applied
    x = torch.randn(2, 3, 64, 64)
    disc.train()
    for _ in range(3):  # power iterations converge
        disc(x)
    w = conv.weight.flatten(1)
    sigma = torch.linalg.matrix_norm(w, ord=2)
    assert abs(float(sigma) - 1.0) < 0.1
