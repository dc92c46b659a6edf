"""Loss maths against hand computations, and the fixes of the anchors' known bugs."""

import time

import pytest
import torch
import torch.nn.functional as F

from vqgan.config import LossConfig
from vqgan.losses import (
    LPIPS,
    BackboneWeightsMissing,
    VGGFeatureLoss,
    VQGANLoss,
    adaptive_weight_from_grads,
    disc_factor,
    discriminator_loss,
    generator_adversarial_loss,
    hinge_d_loss,
    non_saturating_d_loss,
    reconstruction_loss,
    threshold_mask,
)


def test_hinge_known_values():
    real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 - r) = 0, 0.5, 2 -> mean 2.5/3
    fake = torch.tensor([-2.0, 0.0, 1.0])  # relu(1 + f) = 0, 1, 2 -> mean 1
    expected = 0.5 * (2.5 / 3 + 1.0)
    assert hinge_d_loss(real, fake).item() == pytest.approx(expected)
    assert generator_adversarial_loss(fake, "hinge").item() == pytest.approx(1.0 / 3)


def test_non_saturating_targets_are_not_swapped():
    # LlamaGen's non_saturating_d_loss swapped the BCE arguments; real logits must be pushed up, fakes down.
    real = torch.tensor([3.0, 2.0], requires_grad=True)
    fake = torch.tensor([-3.0, -2.0], requires_grad=True)
    loss = non_saturating_d_loss(real, fake)
    expected = 0.5 * (F.softplus(-real).mean() + F.softplus(fake).mean())
    assert loss.item() == pytest.approx(expected.item())
    loss.backward()
    assert (real.grad < 0).all() and (fake.grad > 0).all()
    # a confident, correct discriminator has a small loss; the swapped version would be large
    assert loss.item() < 0.1
    assert discriminator_loss(real, fake, "non_saturating").item() == pytest.approx(loss.item())
    assert generator_adversarial_loss(fake, "non_saturating").item() == pytest.approx(F.softplus(-fake).mean().item())


def test_adaptive_weight_is_the_gradient_norm_ratio():
    torch.manual_seed(0)
    w = torch.randn(4, 3, requires_grad=True)
    x = torch.randn(5, 3)
    nll = (x @ w.t()).square().mean()
    g = -(x @ w.t()).mean() * 3.0
    gn = torch.autograd.grad(nll, w, retain_graph=True)[0].norm()
    gg = torch.autograd.grad(g, w, retain_graph=True)[0].norm()
    grads = [torch.autograd.grad(loss, w, retain_graph=True)[0] for loss in (nll, g)]
    lam = adaptive_weight_from_grads(*grads)
    assert lam.item() == pytest.approx((gn / (gg + 1e-4)).item(), rel=1e-5)
    assert not lam.requires_grad
    assert adaptive_weight_from_grads(grads[0], grads[1] * 1e-12, max_weight=10.0).item() == 10.0


def test_disc_factor_delayed_start_and_ramp():
    assert disc_factor(99, start=100) == 0.0
    assert disc_factor(100, start=100) == 1.0
    assert disc_factor(100, start=100, ramp_steps=10, max_factor=0.75) == pytest.approx(0.075)
    assert disc_factor(104, start=100, ramp_steps=10, max_factor=0.75) == pytest.approx(0.375)
    assert disc_factor(10_000, start=100, ramp_steps=10, max_factor=0.75) == 0.75


def test_reconstruction_losses():
    x = torch.zeros(1, 1, 2, 2)
    y = torch.tensor([[[[1.0, -1.0], [2.0, 0.0]]]])
    assert reconstruction_loss(x, y, "l1").item() == pytest.approx(1.0)
    assert reconstruction_loss(x, y, "l2").item() == pytest.approx(1.5)
    w = torch.tensor([[[[1.0, 0.0], [0.5, 0.0]]]])
    # (1 * 1 + 0.5 * 4) / (1 + 0.5)
    assert reconstruction_loss(x, y, "masked_l2", w).item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="weights"):
        reconstruction_loss(x, y, "masked_l2")
    mask = threshold_mask(torch.tensor([[[[0.5, -0.9]]]]), threshold=-0.5, foreground=1.0, background=0.1)
    assert mask.flatten().tolist() == pytest.approx([1.0, 0.1])


def test_masked_loss_uses_dataset_mask_or_threshold():
    loss = VQGANLoss(LossConfig(reconstruction="masked_l2", perceptual="none", mask_background_weight=0.0))
    x = torch.zeros(1, 1, 1, 2)
    rec = torch.tensor([[[[1.0, 3.0]]]])
    mask = torch.tensor([[[[1.0, 0.0]]]])
    assert loss.nll(x, rec, mask).logs["rec"].item() == pytest.approx(1.0)  # only the masked pixel counts
    with pytest.raises(ValueError, match="mask"):
        loss.nll(x, rec, None)


def test_missing_backbone_fails_fast_and_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache
    start = time.perf_counter()
    with pytest.raises(BackboneWeightsMissing, match="vgg16-397923af.pth") as e:
        LPIPS("vgg")
    assert time.perf_counter() - start < 5
    assert "--loss.backbone_weights" in str(e.value)
    with pytest.raises(BackboneWeightsMissing, match="does not exist"):
        VGGFeatureLoss(backbone_weights=str(tmp_path / "nope.pth"))
    with pytest.raises(BackboneWeightsMissing, match="alexnet"):
        LPIPS("alex")


def test_lpips_loads_a_local_backbone_file_and_matches_the_package(tmp_path):
    import lpips
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.alexnet(weights=None)  # AlexNet: small enough for a fast test
    path = tmp_path / "alexnet.pth"
    torch.save({k: v for k, v in net.state_dict().items() if k.startswith("features.")}, path)
    ours = LPIPS("alex", backbone_weights=str(path))
    ref = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False).eval()
    for sl in ref.net.children():  # the package's slices hold torchvision's feature layers
        for name, module in sl.named_children():
            module.load_state_dict(net.features[int(name)].state_dict())
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(ours(x, y), ref(x, y).flatten())
    assert ours(x, x).abs().max().item() < 1e-6


def test_vgg_feature_loss_zero_on_identical_and_frozen():
    loss = VGGFeatureLoss(random_backbone=True)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert loss(x, x).item() == 0.0
    assert all(not p.requires_grad for p in loss.parameters())
    assert loss(x, x.flip(-1)).item() > 0


def test_generator_loss_composition_and_logs():
    cfg = LossConfig(perceptual="none", disc_weight=0.5, adaptive_weight=False, reconstruction="l1")
    loss = VQGANLoss(cfg)
    x = torch.zeros(1, 1, 2, 2)
    rec = torch.ones(1, 1, 2, 2, requires_grad=True)
    vq = torch.tensor(0.25)
    logits = torch.tensor([[0.5, -1.5]])
    out = loss.generator_loss(x, rec, vq, logits, disc_factor=0.5)
    # 1 (l1) + 0.25 (vq) + 0.5 (disc_weight) * 0.5 (factor) * 0.5 (-mean logits)
    assert out.loss.item() == pytest.approx(1.25 + 0.125)
    assert set(out.logs) >= {"rec", "vq", "g_adv", "d_weight", "total", "nll"}
    before = loss.generator_loss(x, rec, vq, None, disc_factor=0.0)
    assert before.loss.item() == pytest.approx(1.25) and "g_adv" not in before.logs


def test_vgg_feature_loss_taps_are_relu1_2_to_relu4_3():
    """Seed 004 ("Perceptual Loss"): VGG16 features at relu1_2, relu2_2, relu3_3, relu4_3. The names are derived
    from torchvision's vgg16 layout (block b = after b-1 max-pools, j-th ReLU of the block), not copied."""
    import torchvision

    torch.manual_seed(0)
    reference = torchvision.models.vgg16(weights=None).features.eval()
    names, block, relu = {}, 1, 0
    for i, layer in enumerate(reference):
        if isinstance(layer, torch.nn.MaxPool2d):
            block, relu = block + 1, 0
        elif isinstance(layer, torch.nn.ReLU):
            relu += 1
            names[f"relu{block}_{relu}"] = i
    taps = [names[n] for n in ("relu1_2", "relu2_2", "relu3_3", "relu4_3")]
    assert taps == [3, 8, 15, 22]
    assert list(VGGFeatureLoss.LAYERS) == taps

    # The features it compares are those tensors, for a random backbone copied into torchvision's network.
    ours = VGGFeatureLoss(random_backbone=True)
    reference[: len(ours.features)].load_state_dict(ours.features.state_dict())
    captured = {}
    for name in ("relu1_2", "relu2_2", "relu3_3", "relu4_3"):
        reference[names[name]].register_forward_hook(lambda m, i, o, n=name: captured.__setitem__(n, o.clone()))
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    normalized = ((x + 1) / 2 - ours.mean) / ours.std
    with torch.no_grad():
        reference(normalized)
        feats = ours._feats(x)
    assert [f.shape[1] for f in feats] == [64, 128, 256, 512]
    for f, name in zip(feats, ("relu1_2", "relu2_2", "relu3_3", "relu4_3"), strict=True):
        torch.testing.assert_close(f, captured[name])
