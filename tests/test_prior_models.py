"""Stage-2 priors: causality, the KV cache, sampling filters, classifier-free guidance, MaskGIT's schedule, and
that a tiny prior overfits a handful of token maps."""

from __future__ import annotations

import math

import pytest
import torch

from vqgan.models.prior import (
    GPTPrior,
    MaskGITPrior,
    PriorModelConfig,
    build_prior,
    classifier_free_guidance,
    cosine_schedule,
    filter_logits,
    get_prior_preset,
    list_prior_presets,
    masked_counts,
    sample_logits,
)
from vqgan.models.prior.transformer import KVCache, RotaryEmbedding

# One intra-op thread for the whole module (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(kind: str = "gpt", **kw) -> PriorModelConfig:
    base = dict(kind=kind, vocab_size=16, token_height=4, token_width=4, n_layer=2, n_head=2, n_embd=32, num_classes=4)
    return PriorModelConfig(**{**base, **kw})


@pytest.mark.parametrize("name", list_prior_presets("test-"))
def test_every_test_preset_builds_and_scores(name):
    cfg = get_prior_preset(name).model
    torch.manual_seed(0)
    model = build_prior(cfg)
    if cfg.kind == "flow":
        latents = torch.randn(8, cfg.latent_channels, cfg.token_height, cfg.token_width)
        out = model.training_loss(latents, torch.arange(8) % 2)
        # adaLN-Zero starts at velocity 0: the loss is E|x1 - x0|^2 = 2 for unit-variance data and noise.
        assert out.velocity.shape == latents.shape and abs(float(out.loss) - 2.0) < 0.3
        out.loss.backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad and p.dim() > 1)
        return
    tokens = torch.randint(0, cfg.vocab_size, (2, *cfg.token_shape))  # (2, h, w) maps or (2, T, h, w) clips
    out = model.training_loss(tokens, torch.tensor([0, 1]))
    assert out.logits.shape[-1] == cfg.vocab_size
    # An untrained model is close to uniform: the loss is near log(vocab).
    assert abs(float(out.loss) - math.log(cfg.vocab_size)) < 0.5
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad and p.dim() > 1)


@pytest.mark.parametrize("rope", [False, True])
def test_gpt_is_causal(rope):
    torch.manual_seed(0)
    model = GPTPrior(tiny(rope=rope)).eval()
    x = torch.randint(0, 16, (3, 16))
    labels = torch.tensor([0, 2, 4])  # 4 is the null class
    base = model(x[:, :-1], labels).logits
    for t in range(15):
        y = x.clone()
        y[:, t] = (y[:, t] + 1 + torch.arange(3)) % 16
        logits = model(y[:, :-1], labels).logits
        # Output i predicts token i from tokens < i: positions 0..t never see token t.
        torch.testing.assert_close(logits[:, : t + 1], base[:, : t + 1], rtol=0, atol=1e-6)
        assert (logits[:, t + 1] - base[:, t + 1]).abs().max() > 1e-4


def test_maskgit_is_bidirectional():
    torch.manual_seed(0)
    model = MaskGITPrior(tiny("maskgit")).eval()
    x = torch.randint(0, 16, (2, 16))
    y = x.clone()
    y[:, -1] = model.mask_token
    assert (model(x).logits[:, 0] - model(y).logits[:, 0]).abs().max() > 1e-4


@pytest.mark.parametrize("rope", [False, True])
def test_kv_cache_matches_full_forward(rope):
    torch.manual_seed(0)
    model = GPTPrior(tiny(rope=rope)).eval()
    x = torch.randint(0, 16, (2, 15))
    labels = torch.tensor([1, 3])
    full = model(x, labels).logits
    cache = KVCache.empty(model.config, 2, 16, x.device, torch.float32)
    tr = model.transformer
    steps = [model.head(tr(tr.embed(x[:, :0], labels, 0), cache))[:, -1]]
    # A prefill of several tokens at an offset (needs the offset causal mask), then single tokens.
    steps_multi = model.head(tr(tr.embed(x[:, 0:5], None, 1), cache))
    steps += list(steps_multi.unbind(1))
    for i in range(5, 15):
        steps.append(model.head(tr(tr.embed(x[:, i : i + 1], None, i + 1), cache))[:, -1])
    torch.testing.assert_close(torch.stack(steps, 1), full, rtol=1e-5, atol=1e-5)
    assert cache.length == 16


@pytest.mark.parametrize("kw", [{}, {"top_k": 5, "top_p": 0.9, "temperature": 0.8}, {"cfg_scale": 3.0}])
def test_cached_and_uncached_sampling_give_identical_tokens(kw):
    torch.manual_seed(0)
    model = GPTPrior(tiny(rope=True)).eval()
    labels = torch.tensor([0, 1, 2, 3, -1])
    a = model.generate(labels=labels, use_cache=True, generator=torch.Generator().manual_seed(7), **kw)
    b = model.generate(labels=labels, use_cache=False, generator=torch.Generator().manual_seed(7), **kw)
    c = model.generate(labels=labels, use_cache=True, generator=torch.Generator().manual_seed(8), **kw)
    assert a.shape == (5, 4, 4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)  # the seed matters


def test_classifier_free_guidance_math():
    cond, uncond = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([1.0, 1.0, 1.0])
    torch.testing.assert_close(classifier_free_guidance(cond, uncond, 3.0), torch.tensor([4.0, -2.0, -5.0]))
    torch.testing.assert_close(classifier_free_guidance(cond, uncond, 1.0), cond)
    torch.testing.assert_close(classifier_free_guidance(cond, uncond, 0.0), uncond)


@pytest.mark.parametrize("kind", ["gpt", "maskgit"])
def test_guided_greedy_decoding_follows_guided_logits(kind):
    """Greedy decoding with guidance picks arg-max of ``l_u + s (l_c - l_u)`` computed by separate forwards."""
    torch.manual_seed(0)
    model = build_prior(tiny(kind)).eval()
    with torch.no_grad():  # make the (untrained) model depend strongly on the class, so guidance matters
        model.transformer.cls_emb.weight.mul_(50)
    labels, null = torch.tensor([1, 2]), torch.tensor([4, 4])
    s = 2.5
    kw = {"steps": 16} if kind == "maskgit" else {}
    got = model.generate(labels=labels, cfg_scale=s, top_k=1, choice_temperature=0.0, **kw) if kind == "maskgit" \
        else model.generate(labels=labels, cfg_scale=s, top_k=1)
    if kind == "gpt":
        seq = torch.empty(2, 0, dtype=torch.long)
        for _ in range(16):
            lc, lu = model(seq, labels).logits[:, -1], model(seq, null).logits[:, -1]
            seq = torch.cat([seq, classifier_free_guidance(lc, lu, s).argmax(-1, keepdim=True)], 1)
        assert torch.equal(got.flatten(1), seq)
    else:
        # With 16 steps for 16 tokens one token is fixed per step: the most confident guided prediction.
        tokens = torch.full((2, 16), model.mask_token)
        for _ in range(16):
            g = classifier_free_guidance(model(tokens, labels).logits, model(tokens, null).logits, s)
            conf, arg = g.log_softmax(-1).max(-1)
            conf = conf.masked_fill(tokens != model.mask_token, float("-inf"))
            pos = conf.argmax(-1)
            tokens[torch.arange(2), pos] = arg[torch.arange(2), pos]
        assert torch.equal(got.flatten(1), tokens)
    # And guidance changes the samples.
    plain = model.generate(labels=labels, top_k=1, **kw)
    assert not torch.equal(plain, got)


def test_filter_logits_top_k_top_p_temperature():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.1]]))
    keep = lambda z: torch.isfinite(z)[0].tolist()  # noqa: E731
    assert keep(filter_logits(logits, top_k=2)) == [True, True, False, False]
    # Nucleus: the smallest set with mass >= p.
    assert keep(filter_logits(logits, top_p=0.5)) == [True, False, False, False]
    assert keep(filter_logits(logits, top_p=0.6)) == [True, True, False, False]
    assert keep(filter_logits(logits, top_p=0.8)) == [True, True, True, False]
    # Unsorted input: same sets by value.
    perm = torch.tensor([2, 0, 3, 1])
    assert keep(filter_logits(logits[:, perm], top_p=0.6)) == [False, True, False, True]
    torch.testing.assert_close(filter_logits(logits, temperature=2.0), logits / 2)
    with pytest.raises(ValueError):
        filter_logits(logits, temperature=0.0)


def test_sample_logits_frequencies_match_probabilities():
    p = torch.tensor([0.1, 0.6, 0.0, 0.3])
    logits = torch.log(p).expand(20000, 4)
    draws = sample_logits(logits, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=4).float() / draws.numel()
    assert freq[2] == 0
    torch.testing.assert_close(freq, p, atol=0.015, rtol=0)


def test_rope_scores_depend_on_relative_position_only():
    rope = RotaryEmbedding(8, 32)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    score = lambda i, j: float((rope(q, i) * rope(k, j)).sum())  # noqa: E731
    assert score(3, 1) == pytest.approx(score(12, 10), abs=1e-5)
    assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)
    # A rotation keeps norms.
    assert float(rope(q, 5).norm()) == pytest.approx(float(q.norm()), rel=1e-5)


def test_cosine_schedule_and_masked_counts():
    assert float(cosine_schedule(0.0)) == pytest.approx(1.0)
    assert float(cosine_schedule(1.0)) == pytest.approx(0.0, abs=1e-12)
    n, steps = 256, 8
    counts = masked_counts(n, steps)
    expected = [math.floor(n * math.cos(math.pi / 2 * (t + 1) / steps)) for t in range(steps)]
    assert counts == expected == [251, 236, 212, 181, 142, 97, 49, 0]
    assert counts[-1] == 0 and all(a > b for a, b in zip([n, *counts], counts, strict=False))
    # Tight cases: at least one token per step, and as many steps as tokens still ends at zero.
    assert masked_counts(4, 4) == [3, 2, 1, 0]
    assert masked_counts(16, 1) == [0]
    with pytest.raises(ValueError):
        masked_counts(4, 5)


def test_maskgit_decoding_follows_the_schedule():
    torch.manual_seed(0)
    model = MaskGITPrior(tiny("maskgit", token_height=8, token_width=8)).eval()
    out, history = model.generate(num=3, steps=6, generator=torch.Generator().manual_seed(0), return_history=True)
    assert history == masked_counts(64, 6)
    assert out.shape == (3, 8, 8) and int(out.max()) < 16 and int(out.min()) >= 0


def test_maskgit_training_masks_follow_the_cosine_schedule():
    model = MaskGITPrior(tiny("maskgit"))
    g = torch.Generator().manual_seed(0)
    mask = model.random_mask(4000, torch.device("cpu"), g)
    g = torch.Generator().manual_seed(0)
    r = torch.rand(4000, generator=g)
    expected = torch.ceil(16 * torch.cos(r.double() * math.pi / 2)).clamp(1, 16)
    assert torch.equal(mask.sum(-1), expected.long())
    # cos(pi r / 2) with r ~ U(0, 1) has mean 2 / pi; rounding up adds half a token on average.
    assert float(mask.float().mean()) == pytest.approx(2 / math.pi + 0.5 / 16, abs=0.015)


@pytest.mark.parametrize("kind", ["gpt", "maskgit"])
def test_tiny_prior_overfits_a_handful_of_token_maps(kind):
    """Four maps, one per class: after training, class-conditional samples reproduce them."""
    torch.manual_seed(0)
    cfg = tiny(kind, n_embd=64, n_head=4, cond_dropout=0.0, rope=kind == "gpt")
    model = build_prior(cfg)
    maps = torch.randint(0, 16, (4, 4, 4), generator=torch.Generator().manual_seed(1))
    labels = torch.arange(4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(2)
    for _ in range(120):
        loss = model.training_loss(maps.repeat(4, 1, 1), labels.repeat(4), generator=g).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    kw = {"steps": 4} if kind == "maskgit" else {}
    samples = model.generate(labels=labels.repeat(2), temperature=0.5, generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(samples, maps.repeat(2, 1, 1)), float(loss.detach())
