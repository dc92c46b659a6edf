"""Maths of the vector quantizers (plain and EMA VQ): commitment beta on the right term, EMA update, k-means,
dead-code restarts, chunked search, factorized and cosine codes, round trip and straight-through gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vqgan.config import QuantizerConfig
from vqgan.quantizers import VectorQuantizer, build_quantizer, kmeans, nearest_code
from vqgan.quantizers.base import code_histogram


def _vq(**kw) -> VectorQuantizer:
    defaults = dict(codebook_size=8, ema=False, kmeans_init=False, dead_code_threshold=0.0)
    defaults.update(kw)
    dim = defaults.pop("dim", 4)
    return VectorQuantizer(dim, **defaults)


def test_beta_weights_the_commitment_term_not_the_codebook_term() -> None:
    """Hand computation of both gradients (VQ-VAE eq. 3); taming's legacy placement would swap beta."""
    torch.manual_seed(0)
    beta = 0.25
    vq = _vq(beta=beta)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = vq(z)
    out.loss.backward()

    flat = z.detach().movedim(1, -1).reshape(-1, 4)
    e = vq.embedding.weight.detach()
    idx = torch.cdist(flat, e).argmin(1)
    q = e[idx]
    n = flat.numel()
    # d/dz beta * mean((z - sg q)^2) = 2 beta (z - q) / n
    expected_dz = (2 * beta * (flat - q) / n).reshape(2, 3, 3, 4).movedim(-1, 1)
    # d/de mean((e_idx - sg z)^2) = 2 (e - z) / n summed over the rows assigned to each code
    expected_de = torch.zeros_like(e).index_add_(0, idx, 2 * (q - flat) / n)
    assert torch.allclose(z.grad, expected_dz, atol=1e-7)
    assert torch.allclose(vq.embedding.weight.grad, expected_de, atol=1e-7)
    # The legacy (misplaced) variant gives a different encoder gradient: the test above can tell them apart.
    assert not torch.allclose(expected_dz, (2 * (flat - q) / n).reshape(2, 3, 3, 4).movedim(-1, 1))
    assert torch.allclose(out.loss, beta * F.mse_loss(flat, q) + F.mse_loss(q, flat))


def test_ema_update_matches_hand_computation() -> None:
    torch.manual_seed(0)
    decay, eps, k = 0.9, 1e-5, 4
    vq = _vq(codebook_size=k, ema=True, decay=decay, eps=eps, dim=2)
    e0 = vq.embedding.weight.detach().clone()
    size0, sum0 = vq.ema_cluster_size.clone(), vq.ema_embed_sum.clone()
    z = torch.randn(1, 2, 2, 3)
    vq.train()
    out = vq(z)

    flat = z.movedim(1, -1).reshape(-1, 2)
    idx = torch.cdist(flat, e0).argmin(1)
    assert torch.equal(out.indices.reshape(-1), idx)
    onehot = F.one_hot(idx, k).float()
    size = decay * size0 + (1 - decay) * onehot.sum(0)
    embed_sum = decay * sum0 + (1 - decay) * onehot.t() @ flat
    n = size.sum()
    smoothed = (size + eps) / (n + k * eps) * n
    assert torch.allclose(vq.ema_cluster_size, size)
    assert torch.allclose(vq.ema_embed_sum, embed_sum, atol=1e-6)
    assert torch.allclose(vq.embedding.weight, embed_sum / smoothed[:, None], atol=1e-5)
    assert "codebook" not in out.losses  # an EMA codebook has no codebook loss


@pytest.mark.parametrize("ema", [False, True])
@pytest.mark.parametrize("extra", [{}, {"codebook_dim": 3}, {"l2_normalize": True}, {"entropy_weight": 0.1}])
def test_round_trip_and_straight_through(ema: bool, extra: dict) -> None:
    torch.manual_seed(0)
    vq = _vq(ema=ema, dim=6, kmeans_init=True, dead_code_threshold=0.5, **extra)
    z = torch.randn(2, 6, 4, 4, requires_grad=True)
    vq.train()
    out = vq(z)
    g = torch.randn_like(out.quantized)
    (out.quantized * g).sum().backward()
    if "codebook_dim" not in extra and "l2_normalize" not in extra:
        assert torch.equal(z.grad, g)  # straight-through: the gradient is copied to the encoder output
    else:
        assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    vq.eval()
    with torch.no_grad():
        out = vq(z)
        assert torch.equal(vq.indices_to_codes(out.indices), out.quantized)
        assert out.indices.shape == (2, 4, 4)


def test_l2_normalized_codes_lie_on_the_unit_sphere() -> None:
    torch.manual_seed(0)
    vq = _vq(l2_normalize=True, codebook_dim=3, dim=6, ema=True, kmeans_init=True)
    vq.train()
    vq(torch.randn(2, 6, 4, 4))
    norms = vq.lookup_codebook.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    assert vq.project_in.weight.shape == (3, 6)  # factorized: lookup happens in 3 dimensions


def test_chunked_search_equals_full_search() -> None:
    torch.manual_seed(0)
    z, codebook = torch.randn(50, 8), torch.randn(1000, 8)
    full = torch.cdist(z, codebook).argmin(1)
    for chunk in (7, 64, 999, 1000, 4096):
        for rows in (None, 1, 7, 50):
            assert torch.equal(nearest_code(z, codebook, chunk_size=chunk, row_block=rows), full)


def test_262144_code_lookup_runs_chunked() -> None:
    torch.manual_seed(0)
    k = 262_144
    vq = _vq(codebook_size=k, dim=8, search_chunk_size=16_384)
    z = torch.randn(1, 8, 4, 4)
    with torch.no_grad():
        vq.embedding.weight[123_456] = z[0, :, 1, 2]  # plant an exact match far into the codebook
        out = vq.eval()(z)
    assert out.indices[0, 1, 2] == 123_456
    assert out.indices.max() < k


def test_kmeans_finds_separated_clusters() -> None:
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[5.0, 5.0], [-5.0, 5.0], [0.0, -5.0]])
    samples = torch.cat([c + 0.1 * torch.randn(40, 2, generator=g) for c in centers])
    found = kmeans(samples, 3, iters=10, generator=torch.Generator().manual_seed(1))
    assert torch.cdist(centers, found).min(1).values.max() < 0.2


def test_kmeans_init_runs_once_and_is_restored_from_checkpoints() -> None:
    torch.manual_seed(0)
    vq = _vq(ema=True, kmeans_init=True, dim=2)
    z = torch.randn(1, 2, 8, 8) + 10.0  # far from the [-1/K, 1/K] initial codes
    vq.train()
    vq(z)
    assert bool(vq.initialized) and not vq._kmeans_pending
    # k-means put the codes among the data: every code is within the data's range.
    assert (vq.embedding.weight > 5).all()
    fresh = _vq(ema=True, kmeans_init=True, dim=2)
    assert fresh._kmeans_pending
    fresh.load_state_dict(vq.state_dict())
    assert not fresh._kmeans_pending  # a resumed run does not re-initialise its trained codebook


@pytest.mark.parametrize("ema", [False, True])
def test_dead_codes_are_restarted_and_then_used(ema: bool) -> None:
    torch.manual_seed(0)
    k = 16
    vq = _vq(codebook_size=k, ema=ema, dim=2, dead_code_threshold=0.5, usage_decay=0.5)
    with torch.no_grad():
        vq.embedding.weight.fill_(100.0)  # every code far away from the data ...
        vq.embedding.weight[0].zero_()  # ... except code 0, which wins every lookup
        if ema:
            vq.ema_embed_sum.copy_(vq.embedding.weight)
    vq.train()
    z = torch.randn(4, 2, 8, 8)
    first = vq(z)
    # Running usage starts at zero, so all codes are dead and restarted from encoder outputs before the lookup.
    assert int(first.stats["restarted"]) == k
    assert (vq.embedding.weight.abs() < 10).all()  # every code now lies among the encoder outputs
    used = set()
    for _ in range(3):
        used |= set(vq(torch.randn(4, 2, 8, 8)).indices.unique().tolist())
    assert len(used) == k  # the revived codes are actually chosen
    # The restarts were recorded for the diagnostics.
    assert float(vq.pop_window()["restarts"]) >= k


def test_no_restarts_without_threshold_keeps_codes_dead() -> None:
    torch.manual_seed(0)
    vq = _vq(codebook_size=8, dim=2, dead_code_threshold=0.0)
    with torch.no_grad():
        vq.embedding.weight.fill_(100.0)
        vq.embedding.weight[0].zero_()
    vq.train()
    out = vq(torch.randn(2, 2, 4, 4))
    assert out.indices.unique().tolist() == [0]
    assert int(vq.dead_codes().sum()) == 7  # reported with the default reporting threshold


def test_entropy_penalty_rewards_spread_assignments() -> None:
    torch.manual_seed(0)
    vq = _vq(codebook_size=4, dim=2, entropy_weight=1.0, entropy_temperature=1.0)
    with torch.no_grad():
        vq.embedding.weight.copy_(torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.0], [0.0, -2.0]]))
    spread = vq.embedding.weight.detach().repeat(4, 1)  # 16 samples, 4 on each code
    collapsed = vq.embedding.weight.detach()[:1].repeat(16, 1)
    h = lambda x: vq._entropy_penalty(x, vq.lookup_codebook.detach())  # noqa: E731
    assert h(spread) < h(collapsed)


def test_histogram_matches_bincount() -> None:
    idx = torch.randint(0, 10, (5, 7))
    assert torch.equal(code_histogram(idx, 12), torch.bincount(idx.flatten(), minlength=12).float())


def test_build_quantizer_rejects_unknown_kind() -> None:
    cfg = QuantizerConfig()
    cfg.kind = "nope"  # type: ignore[assignment]
    with pytest.raises(ValueError, match="choose one of"):
        build_quantizer(cfg, 4)


def test_nearest_code_is_computed_in_fp32_under_bf16_autocast() -> None:
    """Codes close to each other relative to their norm: bf16 distances confuse them, the search must not."""
    g = torch.Generator().manual_seed(0)
    centre = 5 * torch.randn(1, 32, generator=g)
    codebook = centre + 0.05 * torch.randn(64, 32, generator=g)
    z = centre + 0.05 * torch.randn(256, 32, generator=g)
    exact = torch.cdist(z.double(), codebook.double()).argmin(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        naive = torch.addmm(codebook.pow(2).sum(1), z, codebook.t(), alpha=-2.0).min(1).indices
        found = nearest_code(z, codebook)
    assert (naive == exact).float().mean() < 0.5  # what a bf16 search returns
    assert torch.equal(found, nearest_code(z, codebook))  # the same as without autocast
    assert (found == exact).float().mean() > 0.98  # fp32 expansion ||z||^2 - 2 z.e + ||e||^2: near-ties only
