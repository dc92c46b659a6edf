"""FSQ, LFQ, residual VQ and SimVQ: code counts, round trips, straight-through gradients, and agreement with
vector-quantize-pytorch where it implements the same maths."""

from __future__ import annotations

import math

import pytest
import torch

from vqgan.config import QuantizerConfig
from vqgan.quantizers import FSQ, LFQ, ResidualQuantizer, SimVQ, VectorQuantizer, build_quantizer

vqp = pytest.importorskip("vector_quantize_pytorch", reason="reference implementation for FSQ/LFQ comparisons")


@pytest.mark.parametrize(
    "cfg",
    [
        QuantizerConfig(kind="vq", codebook_size=16, kmeans_init=False),
        QuantizerConfig(kind="ema", codebook_size=16, dead_code_threshold=0.1),
        QuantizerConfig(kind="fsq", levels=[3, 4, 5]),
        QuantizerConfig(kind="lfq", codebook_size=32),
        QuantizerConfig(kind="simvq", codebook_size=16),
        QuantizerConfig(kind="residual", num_stages=3, stage_kind="ema", codebook_size=16),
        QuantizerConfig(kind="residual", num_stages=2, stage_kind="fsq", levels=[5, 5]),
        QuantizerConfig(kind="residual", num_stages=2, stage_kind="simvq", codebook_size=16),
    ],
    ids=lambda c: f"{c.kind}-{c.stage_kind}" if c.kind == "residual" else c.kind,
)
def test_every_quantizer_round_trips_and_passes_gradients_straight_through(cfg: QuantizerConfig) -> None:
    torch.manual_seed(0)
    q = build_quantizer(cfg, 6)
    z = torch.randn(2, 6, 4, 4, requires_grad=True)
    q.train()
    out = q(z)
    assert out.quantized.shape == z.shape and out.loss.dim() == 0
    assert out.indices.shape == ((2, 4, 4, cfg.num_stages) if cfg.kind == "residual" else (2, 4, 4))
    assert int(out.indices.min()) >= 0 and int(out.indices.max()) < q.codebook_size
    (out.quantized.sum() + out.loss).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    q.eval()
    with torch.no_grad():
        out = q(z)
        assert torch.equal(q.indices_to_codes(out.indices), out.quantized)
        assert q.codebook.shape == (q.codebook_size, 6)


def test_fsq_matches_vector_quantize_pytorch() -> None:
    torch.manual_seed(0)
    levels = [8, 5, 5, 5]
    ours, theirs = FSQ(4, levels), vqp.FSQ(levels)
    z = torch.randn(2, 4, 5, 5) * 2
    out = ours(z)
    ref_q, ref_idx = theirs(z)
    assert torch.allclose(out.quantized, ref_q, atol=1e-6)
    assert torch.equal(out.indices, ref_idx.long())


@pytest.mark.parametrize("levels", [[8, 5, 5, 5], [4, 4, 4, 4, 4], [3, 2], [8, 8, 8, 5, 5, 5]])
def test_fsq_code_count_and_every_code_distinct(levels: list[int]) -> None:
    fsq = FSQ(len(levels), levels)
    k = math.prod(levels)
    assert fsq.codebook_size == k
    codes = fsq.indices_to_level_codes(torch.arange(k))
    assert torch.unique(codes, dim=0).shape[0] == k  # k distinct grid points
    assert torch.equal(fsq.codes_to_indices(codes), torch.arange(k))  # the index map is a bijection
    for i, level in enumerate(levels):
        assert torch.unique(codes[:, i]).numel() == level


def test_fsq_reaches_every_code_and_straight_through_gradient() -> None:
    fsq = FSQ(2, [3, 4])
    grid = torch.cartesian_prod(torch.linspace(-4, 4, 41), torch.linspace(-4, 4, 41)).t().reshape(1, 2, 41, 41)
    assert fsq(grid).indices.unique().numel() == 12
    z = torch.randn(1, 2, 3, 3, requires_grad=True)
    fsq(z).quantized.sum().backward()
    # Gradient of round_ste(bound(z)) / half_width is bound'(z) / half_width: positive, finite.
    assert (z.grad > 0).all()


@pytest.mark.parametrize("bits", [1, 5, 10])
def test_lfq_code_count_and_bijection(bits: int) -> None:
    k = 2**bits
    lfq = LFQ(bits, k)
    codes = lfq.indices_to_bit_codes(torch.arange(k))
    assert torch.unique(codes, dim=0).shape[0] == k and set(codes.unique().tolist()) <= {-1.0, 1.0}
    out = lfq.eval()(codes.t().reshape(1, bits, k, 1))
    assert torch.equal(out.indices.reshape(-1), torch.arange(k))
    with pytest.raises(ValueError, match="power-of-two"):
        LFQ(4, 24)


def test_lfq_entropy_and_indices_match_vector_quantize_pytorch() -> None:
    torch.manual_seed(0)
    bits = 6
    ours = LFQ(bits, 2**bits, temperature=0.01)
    theirs = vqp.LFQ(dim=bits, codebook_size=2**bits, entropy_loss_weight=0.1)
    z = torch.randn(2, bits, 4, 4) * 0.05
    ref, breakdown = theirs(z, inv_temperature=100.0, return_loss_breakdown=True)
    sample_h, codebook_h = ours.entropy_terms(z.movedim(1, -1).reshape(-1, bits))
    assert torch.allclose(sample_h, breakdown.per_sample_entropy, atol=2e-3)
    assert torch.allclose(codebook_h, breakdown.batch_entropy, atol=2e-3)
    out = ours.train()(z)
    assert torch.allclose(out.quantized, ref.quantized)
    # vector-quantize-pytorch numbers the bits most significant first; ours least significant first.
    reversed_bits = sum(((out.indices >> i) & 1) << (bits - 1 - i) for i in range(bits))
    assert torch.equal(reversed_bits, ref.indices.long())


def test_lfq_factorized_entropy_for_huge_codebooks() -> None:
    """Per-sample entropy is exact either way; the factorized batch entropy bounds the exact one from above."""
    torch.manual_seed(0)
    h = torch.randn(64, 8) * 0.02
    exact, factorized = LFQ(8, 256, exact_entropy_max_codes=256), LFQ(8, 256, exact_entropy_max_codes=1)
    s_exact, c_exact = exact.entropy_terms(h)
    s_fact, c_fact = factorized.entropy_terms(h)
    assert torch.allclose(s_exact, s_fact, atol=1e-5)
    assert c_fact >= c_exact - 1e-5
    big = LFQ(32, 2**18)  # 262,144 implicit codes: no N x K matrix anywhere
    out = big.train()(torch.randn(2, 32, 4, 4))
    assert int(out.indices.max()) < 2**18 and torch.isfinite(out.loss)


def test_residual_stages_reduce_the_error_and_gradient_is_identity() -> None:
    torch.manual_seed(0)
    cfg = QuantizerConfig(kind="ema", codebook_size=32, kmeans_init=True)
    stages = [build_quantizer(cfg, 4) for _ in range(4)]
    rvq = ResidualQuantizer(stages).train()
    z = torch.randn(4, 4, 8, 8)
    rvq(z)  # k-means initialises each stage on its residual
    rvq.eval()
    errors = []
    with torch.no_grad():
        for s in range(1, 5):
            partial = ResidualQuantizer(list(rvq.stages[:s])).eval()
            errors.append(float((partial(z).quantized - z).pow(2).mean()))
    assert all(b < a for a, b in zip(errors, errors[1:], strict=False)), errors
    zg = z.clone().requires_grad_()
    g = torch.randn_like(z)
    (rvq.train()(zg).quantized * g).sum().backward()
    assert torch.equal(zg.grad, g)  # the encoder receives the decoder's gradient once, not num_stages times


def test_simvq_codebook_is_frozen_and_the_linear_map_learns() -> None:
    torch.manual_seed(0)
    q = SimVQ(4, 16)
    frozen = q.frozen_codebook.clone()
    assert not any(b is q.frozen_codebook for b in q.parameters())
    opt = torch.optim.SGD(q.parameters(), lr=0.5)
    z = torch.randn(2, 4, 4, 4) * 3
    before = float(q(z).losses["codebook"])
    for _ in range(20):
        opt.zero_grad()
        q(z).loss.backward()
        opt.step()
    assert torch.equal(q.frozen_codebook, frozen)
    assert float(q(z).losses["codebook"]) < before
    # The map moves every code, selected or not.
    q2 = SimVQ(4, 16)
    moved = (q.codebook - q2.codebook).norm(dim=1)
    assert (moved > 1e-3).all()


def test_factorized_vq_matches_vector_quantize_pytorch_lookup() -> None:
    """Same codebook, same projection: same indices as vector-quantize-pytorch's nearest-code search."""
    torch.manual_seed(0)
    ours = VectorQuantizer(8, 32, codebook_dim=4, ema=True, kmeans_init=False).eval()
    theirs = vqp.VectorQuantize(dim=8, codebook_size=32, codebook_dim=4, rotation_trick=False).eval()
    with torch.no_grad():
        theirs.project_in.weight.copy_(ours.project_in.weight)
        theirs.project_in.bias.copy_(ours.project_in.bias)
        theirs._codebook.embed.copy_(ours.embedding.weight[None])
    x = torch.randn(2, 10, 8)
    _, ref_idx, _ = theirs(x)
    out = ours(x.transpose(1, 2))
    assert torch.equal(out.indices, ref_idx)
