"""Property-based tests of the vector quantizers' stable interface (``build_quantizer(QuantizerConfig(kind=...),
dim)`` -> ``forward`` -> ``QuantizerOutput``; ``indices_to_codes``) on random shapes and codebook sizes.

Small, derandomized example counts so that CI stays fast and deterministic.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vqgan.config import QuantizerConfig
from vqgan.quantizers import QuantizerOutput, build_quantizer

# One thread, and vqgan log handlers restored after each test (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread_and_own_log_handlers")

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def cases(draw):
    kind = draw(st.sampled_from(["vq", "ema"]))
    dim = draw(st.integers(1, 8))
    size = draw(st.integers(2, 40))
    spatial = draw(st.lists(st.integers(1, 5), min_size=1, max_size=3))  # 1-D, images (H, W), videos (T, H, W)
    batch = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**16))
    scale = draw(st.sampled_from([1e-3, 1.0, 50.0]))
    return kind, dim, size, (batch, dim, *spatial), seed, scale


def _quantizer(kind: str, dim: int, size: int):
    cfg = QuantizerConfig(kind=kind, codebook_size=size, kmeans_init=False, dead_code_threshold=0.0)
    return build_quantizer(cfg, dim)


def _codebook(q, size: int, dim: int) -> torch.Tensor:
    """All code vectors as a ``(size, dim)`` matrix, through the public ``indices_to_codes``."""
    codes = q.indices_to_codes(torch.arange(size).reshape(1, size, 1))  # (1, dim, size, 1)
    assert codes.shape == (1, dim, size, 1)
    return codes[0, :, :, 0].T


@SETTINGS
@given(cases())
def test_indices_in_range_and_quantized_rows_are_nearest_codebook_rows(case):
    kind, dim, size, shape, seed, scale = case
    torch.manual_seed(seed)
    q = _quantizer(kind, dim, size).eval()
    z = torch.randn(shape) * scale
    with torch.no_grad():
        out = q(z)
    assert isinstance(out, QuantizerOutput)
    assert out.quantized.shape == z.shape and out.quantized.dtype == z.dtype
    assert out.indices.shape == (shape[0], *shape[2:]) and not out.indices.is_floating_point()
    assert int(out.indices.min()) >= 0 and int(out.indices.max()) < size
    assert out.loss.dim() == 0 and torch.isfinite(out.loss) and out.loss >= 0
    # Every quantized vector is exactly a codebook row, the one its index names.
    assert torch.equal(q.indices_to_codes(out.indices), out.quantized)
    book = _codebook(q, size, dim)
    vectors = out.quantized.movedim(1, -1).reshape(-1, dim)
    assert torch.equal(vectors, book[out.indices.reshape(-1)])
    # ... and a nearest one (ties allowed): no code is closer to the input than the chosen code.
    flat = z.movedim(1, -1).reshape(-1, dim)
    d = torch.cdist(flat.double(), book.double()) ** 2
    chosen = d.gather(1, out.indices.reshape(-1, 1)).squeeze(1)
    assert torch.all(chosen <= d.min(1).values * (1 + 1e-5) + 1e-6 * scale**2)


@SETTINGS
@given(cases())
def test_straight_through_gradient_is_the_identity(case):
    kind, dim, size, shape, seed, scale = case
    torch.manual_seed(seed)
    q = _quantizer(kind, dim, size).train()
    z = (torch.randn(shape) * scale).requires_grad_(True)
    out = q(z)
    assert out.quantized.shape == z.shape and out.indices.shape == (shape[0], *shape[2:])
    w = torch.randn(shape)
    (grad,) = torch.autograd.grad((out.quantized * w).sum(), z)
    # d quantized / d z is the identity (Bengio et al. 2013): the upstream gradient passes through unchanged.
    assert torch.allclose(grad, w, rtol=1e-5, atol=1e-6)
    # The forward value is still the quantized one (codes, not the input). (An EMA codebook moves during its own
    # training forward pass, after the lookup, so only the gradient-trained one can be compared afterwards.)
    if kind == "vq":
        with torch.no_grad():
            assert torch.equal(out.quantized.detach(), q.indices_to_codes(out.indices))


@SETTINGS
@given(cases(), st.randoms(use_true_random=False))
def test_batch_permutation_equivariance_and_determinism(case, rnd):
    kind, dim, size, shape, seed, scale = case
    torch.manual_seed(seed)
    q = _quantizer(kind, dim, size).eval()
    z = torch.randn(shape) * scale
    perm = list(range(shape[0]))
    rnd.shuffle(perm)
    with torch.no_grad():
        a, b, c = q(z), q(z), q(z[perm])
    assert torch.equal(a.indices, b.indices) and torch.equal(a.quantized, b.quantized)
    assert torch.equal(c.indices, a.indices[perm])
