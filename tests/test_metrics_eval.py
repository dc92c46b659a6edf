"""Evaluation metrics against known values and reference implementations: PSNR of a known noise level, SSIM of
identical images, LPIPS against the lpips package's own network, FID against the closed form, the evaluate
command's JSON and its refusal of missing weight files."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from vqgan.config import to_dict
from vqgan.losses.perceptual import BackboneWeightsMissing
from vqgan.metrics.evaluate import evaluate_tokenizer, reconstruction_metrics
from vqgan.metrics.fid import INCEPTION_FILE, ReconstructionFID, frechet_distance
from vqgan.metrics.lpips import LPIPSMetric
from vqgan.metrics.reconstruction import psnr, ssim
from vqgan.models import VQModel
from vqgan.registry import get_preset


def test_psnr_of_known_noise_level():
    g = torch.Generator().manual_seed(0)
    x_unit = 0.2 + 0.6 * torch.rand(4, 3, 16, 16, generator=g)
    delta = 0.05  # +-delta everywhere: MSE is exactly delta^2, and nothing is clamped
    sign = torch.randint(0, 2, x_unit.shape, generator=g).float() * 2 - 1
    y_unit = x_unit + delta * sign
    p = psnr(x_unit * 2 - 1, y_unit * 2 - 1)
    assert p.shape == (4,)
    assert torch.allclose(p, torch.full((4,), -10 * math.log10(delta**2)), atol=1e-3)


def test_ssim_of_identical_images_is_one_and_drops_with_noise():
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert torch.allclose(ssim(x, x), torch.ones(3), atol=1e-5)
    noisy = (x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))).clamp(-1, 1)
    assert (ssim(x, noisy) < 0.9).all()


# -- LPIPS -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def alex_reference(tmp_path_factory):
    """The lpips package's own AlexNet LPIPS with a seeded random backbone, and that backbone saved as a
    torchvision-style ``features.N.*`` state dict file."""
    import lpips

    torch.manual_seed(123)
    ref = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False).eval()
    state = {}
    for sl in ref.net.children():  # lpips names each layer by its index in torchvision's alexnet.features
        for name, module in sl.named_children():
            for k, v in module.state_dict().items():
                state[f"features.{name}.{k}"] = v.clone()
    path = tmp_path_factory.mktemp("lpips") / "alexnet-random.pth"
    torch.save(state, path)
    return ref, path


def test_lpips_metric_equals_lpips_package(alex_reference):
    ref, path = alex_reference
    metric = LPIPSMetric("alex", path)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(3, 3, 32, 32, generator=g) * 2 - 1
    y = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    ours = metric(x, y)
    with torch.no_grad():
        theirs = ref(x, y, normalize=False).flatten()
    assert ours.shape == (3,)
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    assert (ours > 0).all()
    assert torch.allclose(metric(x, x), torch.zeros(3), atol=1e-6)


def test_lpips_without_backbone_file_names_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache
    with pytest.raises(BackboneWeightsMissing, match="vgg16-397923af.pth"):
        LPIPSMetric("vgg", None)
    with pytest.raises(BackboneWeightsMissing, match="missing.pth"):
        LPIPSMetric("alex", tmp_path / "missing.pth")


# -- FID ---------------------------------------------------------------------------------------------------
class _FeaturesAsImages(nn.Module):
    """A 'feature extractor' that returns its input: lets the test feed feature vectors directly."""

    def __init__(self, dim: int):
        super().__init__()
        self.num_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.double()


def _fid_of_features(a: torch.Tensor, b: torch.Tensor) -> float:
    fid = ReconstructionFID(extractor=_FeaturesAsImages(a.shape[1]))
    fid.fid.update(a, real=True)
    fid.fid.update(b, real=False)
    return fid.compute()


def _closed_form(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_fid_identical_features_is_zero():
    a = torch.randn(200, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert abs(_fid_of_features(a, a.clone())) < 1e-6


def test_fid_of_shifted_and_scaled_gaussians_matches_closed_form():
    g = torch.Generator().manual_seed(5)
    a = torch.randn(500, 6, generator=g, dtype=torch.float64)
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0, 0.0, 3.0], dtype=torch.float64)
    b = 1.5 * torch.randn(500, 6, generator=g, dtype=torch.float64) + shift
    got = _fid_of_features(a, b)
    assert got == pytest.approx(_closed_form(a.numpy(), b.numpy()), rel=1e-6)
    # and the population value ||shift||^2 + d (1 - 1.5)^2 within sampling error
    assert got == pytest.approx(float(shift.pow(2).sum()) + 6 * 0.25, rel=0.1)
    # frechet_distance on the population statistics is exact
    eye = torch.eye(6, dtype=torch.float64)
    assert frechet_distance(torch.zeros(6), eye, shift, 2.25 * eye) == pytest.approx(float(shift.pow(2).sum()) + 1.5)


@pytest.fixture(scope="module")
def fake_inception_file(tmp_path_factory):
    """torch-fidelity's Inception-v3 architecture with seeded random weights, saved as a weights file (the real
    file is 91 MB and needs a download)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _RandomInit(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):  # keep the random init
            return None

    d = tmp_path_factory.mktemp("inception")
    torch.save({}, d / "empty.pth")
    torch.manual_seed(0)
    net = _RandomInit("inception-v3-compat", ["64"], feature_extractor_weights_path=str(d / "empty.pth"))
    path = d / INCEPTION_FILE
    torch.save(net.state_dict(), path)
    return path


def test_rfid_from_weights_file(fake_inception_file):
    g = torch.Generator().manual_seed(6)
    x = torch.rand(6, 3, 16, 16, generator=g) * 2 - 1
    same = ReconstructionFID(fake_inception_file, feature=64)
    same.update(x, x.clone())
    assert same.num_images == 6
    assert abs(same.compute()) < 1e-2
    diff = ReconstructionFID(fake_inception_file, feature=64)
    diff.update(x, (x * 0.3 + 0.5).clamp(-1, 1))
    assert diff.compute() > 10 * max(abs(same.compute()), 1e-3)


def test_rfid_refuses_missing_and_unsafe_files(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=INCEPTION_FILE):
        ReconstructionFID(None)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        ReconstructionFID(tmp_path / "nope.pth")

    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    bad = tmp_path / "evil.pth"
    with open(bad, "wb") as f:
        pickle.dump(Evil(), f)
    with pytest.raises(ValueError, match="not a plain PyTorch state dict"):
        ReconstructionFID(bad)


# -- whole-set evaluation and the command ------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return VQModel(get_preset("test-taming").model).eval()


def test_reconstruction_metrics_over_a_loader(tiny_model, alex_reference):
    g = torch.Generator().manual_seed(7)
    x = torch.rand(10, 3, 16, 16, generator=g) * 2 - 1
    loader = DataLoader(TensorDataset(x), batch_size=4, collate_fn=lambda b: {"image": torch.stack([t[0] for t in b])})
    _, lpips_file = alex_reference
    lp = LPIPSMetric("alex", lpips_file)
    m = reconstruction_metrics(tiny_model, loader, lpips=lp)
    with torch.no_grad():
        out = tiny_model(x)
    assert m["num_images"] == 10
    assert m["psnr"] == pytest.approx(float(psnr(x, out.reconstruction).mean()), rel=1e-5)
    assert m["ssim"] == pytest.approx(float(ssim(x, out.reconstruction).mean()), rel=1e-4)
    assert m["lpips"] == pytest.approx(float(lp(x, out.reconstruction).mean()), rel=1e-5)
    counts = torch.bincount(out.indices.flatten(), minlength=32)
    assert m["codes_used"] == int((counts > 0).sum())
    assert m["codebook_usage"] == pytest.approx(float((counts > 0).float().mean()))
    p = counts.double() / counts.sum()
    h = -(p[p > 0] * p[p > 0].log()).sum()
    assert m["perplexity"] == pytest.approx(float(h.exp()), rel=1e-5)
    assert m["code_entropy_bits"] == pytest.approx(float(h / math.log(2)), rel=1e-5)


def _write_checkpoint(model: VQModel, path):
    cfg = get_preset("test-taming")
    torch.save({"hyper_parameters": {"config": to_dict(cfg)},
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


def test_evaluate_command_writes_metrics_and_protocol(tiny_model, tmp_path, alex_reference, capsys):
    from vqgan.cli import main

    ckpt = _write_checkpoint(tiny_model, tmp_path / "model.ckpt")
    _, lpips_file = alex_reference
    rc = main(["evaluate", "--ckpt", str(ckpt), "--output", str(tmp_path / "ev"), "--progress", "false",
               "--lpips-weights", str(lpips_file), "--lpips-net", "alex", "--batch-size", "3", "--whole-split", "false"])
    assert rc == 0
    table = capsys.readouterr().out
    assert "PSNR" in table and "LPIPS" in table and "perplexity" in table
    result = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    m, p = result["metrics"], result["protocol"]
    n = get_preset("test-taming").data.val_size
    assert p["num_images"] == m["num_images"] == n
    assert p["resolution"] == [16, 16]
    assert "crops (evenly thinned to at most 8)" in p["preprocessing"]
    assert p["lpips"]["backbone_weights"] == str(lpips_file)
    assert 0 < m["lpips"] and 0 < m["codebook_usage"] <= 1 and m["psnr"] > 0
    # the library on the same data gives the same numbers
    from jsonargparse import Namespace

    from vqgan.cli.evaluate import _eval_loader

    loader, data = _eval_loader(tiny_model, Namespace(**to_dict(get_preset("test-taming").data)), 3, None)
    again = evaluate_tokenizer(tiny_model, loader, data)
    assert again.metrics["psnr"] == pytest.approx(m["psnr"], rel=1e-6)


def test_evaluate_command_refuses_a_metric_without_its_file(tiny_model, tmp_path, monkeypatch, capsys):
    from vqgan.cli import main

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    ckpt = _write_checkpoint(tiny_model, tmp_path / "model.ckpt")
    assert main(["evaluate", "--ckpt", str(ckpt), "--metrics", "psnr,fid", "--progress", "false"]) == 2
    assert INCEPTION_FILE in capsys.readouterr().err
    assert main(["evaluate", "--ckpt", str(ckpt), "--metrics", "psnr,lpips", "--progress", "false"]) == 2
    assert "vgg16-397923af.pth" in capsys.readouterr().err
