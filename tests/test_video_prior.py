"""Priors over (T, h, w) token grids of video tokenizers: causality over time and space, the KV cache, 3D RoPE,
frame prediction from given frames, overfitting a handful of clips, and classifier-free guidance."""

from __future__ import annotations

import pytest
import torch

from vqgan.models.prior import GPTPrior, MaskGITPrior, PriorModelConfig, build_prior
from vqgan.models.prior.transformer import KVCache, RotaryEmbedding, grid_positions, rope_sections

# One intra-op thread for the whole module (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")

T, H, W = 3, 2, 3  # 18 tokens: small, with every axis longer than one


def tiny(kind: str = "gpt", **kw) -> PriorModelConfig:
    base = dict(kind=kind, vocab_size=12, token_frames=T, token_height=H, token_width=W, n_layer=2, n_head=2,
                n_embd=32, num_classes=3, rope=True)
    return PriorModelConfig(**{**base, **kw})


def test_grid_config_shapes_and_validation():
    cfg = tiny()
    assert cfg.num_tokens == T * H * W and cfg.frame_tokens == H * W and cfg.token_shape == (T, H, W)
    assert PriorModelConfig(token_height=4, token_width=5).token_shape == (4, 5)
    with pytest.raises(ValueError, match="token_frames"):
        tiny(token_frames=0).validate()
    with pytest.raises(ValueError, match="head dimension of at least 6"):
        tiny(n_embd=8, n_head=2).validate()
    with pytest.raises(ValueError, match="frame_prediction_prob"):
        tiny(frame_prediction_prob=1.5).validate()


def test_3d_rope_splits_frequencies_and_scores_depend_on_offsets_per_axis():
    assert rope_sections(64, 3) == [16, 24, 24] and rope_sections(8, 3) == [2, 3, 3] and rope_sections(4, 1) == [4]
    pos = grid_positions(T, H, W)
    assert pos.shape == (1 + T * H * W, 3) and pos[0].tolist() == [0, 0, 0]
    assert pos[1].tolist() == [1, 1, 1] and pos[-1].tolist() == [T, H, W]
    # Raster order: time, then rows, then columns.
    assert pos[2].tolist() == [1, 1, 2] and pos[1 + W].tolist() == [1, 2, 1] and pos[1 + H * W].tolist() == [2, 1, 1]
    big = grid_positions(6, 6, 6)
    rope = RotaryEmbedding(16, len(big), positions=big)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)
    index = {tuple(p): i for i, p in enumerate(big.tolist())}

    def score(a, b):
        return float((rope(q, index[a]) * rope(k, index[b])).sum())

    # Same 3D offset, different places: same score; an offset along any single axis changes it.
    assert score((3, 2, 4), (2, 1, 1)) == pytest.approx(score((5, 5, 6), (4, 4, 3)), abs=1e-4)
    for other in ((1, 1, 1), (2, 2, 1), (2, 1, 2)):
        assert score((3, 2, 4), (2, 1, 1)) != pytest.approx(score((3, 2, 4), other), abs=1e-3)
    # One axis: the 1D RoPE of images is unchanged (positions 0 .. L-1).
    torch.testing.assert_close(RotaryEmbedding(8, 10).cos, RotaryEmbedding(8, 10, positions=torch.arange(10)[:, None]).cos)


@pytest.mark.parametrize("rope", [False, True])
def test_video_gpt_is_causal_over_time_and_space(rope):
    """Changing token i never changes the logits of positions <= i, whether i moves along x, y or t."""
    torch.manual_seed(0)
    model = GPTPrior(tiny(rope=rope)).eval()
    n = T * H * W
    x = torch.randint(0, 12, (2, T, H, W))
    labels = torch.tensor([0, 3])  # 3 is the null class
    base = model(x.flatten(1)[:, :-1], labels).logits
    assert base.shape == (2, n, 12)
    for i in range(n - 1):
        y = x.clone().flatten(1)
        y[:, i] = (y[:, i] + 1 + torch.arange(2)) % 12
        logits = model(y.view(2, T, H, W).flatten(1)[:, :-1], labels).logits
        torch.testing.assert_close(logits[:, : i + 1], base[:, : i + 1], rtol=0, atol=1e-6)
        assert (logits[:, i + 1] - base[:, i + 1]).abs().max() > 1e-5


@pytest.mark.parametrize("rope", [False, True])
def test_kv_cache_equals_the_full_pass_over_a_3d_grid(rope):
    torch.manual_seed(0)
    model = GPTPrior(tiny(rope=rope)).eval()
    n = T * H * W
    x = torch.randint(0, 12, (2, n - 1))
    labels = torch.tensor([1, 2])
    full = model(x, labels).logits
    tr = model.transformer
    cache = KVCache.empty(model.config, 2, n, x.device, torch.float32)
    # Prefill the class and the first frame (as frame prediction does), then one token at a time.
    k = H * W
    steps = list(model.head(tr(tr.embed(x[:, :k], labels, 0), cache)).unbind(1))
    for i in range(k, n - 1):
        steps.append(model.head(tr(tr.embed(x[:, i : i + 1], None, i + 1), cache))[:, -1])
    torch.testing.assert_close(torch.stack(steps, 1), full, rtol=1e-5, atol=1e-5)
    assert cache.length == n


@pytest.mark.parametrize("prefix_frames", [0, 1, 2])
@pytest.mark.parametrize("kw", [{}, {"cfg_scale": 2.5, "top_k": 6}])
def test_video_gpt_cached_and_uncached_sampling_agree(prefix_frames, kw):
    torch.manual_seed(0)
    model = GPTPrior(tiny()).eval()
    labels = torch.tensor([0, 1, 2, -1])
    prefix = torch.randint(0, 12, (4, prefix_frames, H, W)) if prefix_frames else None

    def draw(cache, seed=7):
        g = torch.Generator().manual_seed(seed)
        return model.generate(labels=labels, prefix=prefix, use_cache=cache, generator=g, **kw)

    a, b = draw(True), draw(False)
    assert a.shape == (4, T, H, W) and torch.equal(a, b)
    assert not torch.equal(a, draw(True, seed=8))


@pytest.mark.parametrize("kind", ["gpt", "maskgit"])
def test_frame_prediction_keeps_the_given_frames_codes_exactly(kind):
    torch.manual_seed(0)
    model = build_prior(tiny(kind)).eval()
    given = torch.randint(0, 12, (5, 2, H, W))
    kw = {"steps": 3} if kind == "maskgit" else {}
    out = model.generate(labels=torch.arange(5) % 3, prefix=given, generator=torch.Generator().manual_seed(0), **kw)
    assert out.shape == (5, T, H, W)
    assert torch.equal(out[:, :2], given)
    assert int(out.min()) >= 0 and int(out.max()) < 12  # no mask token left
    # A flat prefix of whole frames is the same thing.
    out2 = model.generate(labels=torch.arange(5) % 3, prefix=given.flatten(1), generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(out, out2)
    with pytest.raises(ValueError, match="nothing to generate"):
        model.generate(prefix=torch.zeros(1, T, H, W, dtype=torch.long))
    with pytest.raises(ValueError, match="prefixes for a batch"):
        model.generate(labels=torch.tensor([0, 1]), prefix=given)


def test_maskgit_frame_prediction_masks_only_the_future():
    torch.manual_seed(0)
    model = MaskGITPrior(tiny("maskgit", frame_prediction_prob=0.5))
    g = torch.Generator().manual_seed(0)
    mask = model.random_mask(4000, torch.device("cpu"), g).view(4000, T, H * W)
    # Rows whose first latent frame is fully visible are (mostly) the frame-prediction rows: about half, plus the
    # few uniform rows that happen to leave frame 0 unmasked.
    past_visible = ~mask[:, 0].any(-1)
    assert 0.5 <= float(past_visible.float().mean()) <= 0.65
    # In those rows the masked positions start at a frame boundary: every frame before the first masked one is
    # entirely visible.
    for row in mask[past_visible][:200]:
        masked_frames = row.any(-1)
        first = int(masked_frames.float().argmax())
        assert not row[:first].any() and row.any()
    # Without the option the masks are uniform over the grid (frame 0 fully visible only by chance).
    uniform = MaskGITPrior(tiny("maskgit")).random_mask(4000, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert float((~uniform.view(4000, T, H * W)[:, 0].any(-1)).float().mean()) < 0.15


@pytest.mark.parametrize("kind", ["gpt", "maskgit"])
def test_tiny_video_prior_overfits_a_handful_of_clips(kind):
    """Three token clips, one per class: after training, class-conditional samples reproduce them, and frame
    prediction from a clip's first frame continues that clip."""
    torch.manual_seed(0)
    cfg = tiny(kind, n_embd=64, n_head=4, cond_dropout=0.0, frame_prediction_prob=0.3 if kind == "maskgit" else 0.0)
    model = build_prior(cfg)
    clips = torch.randint(0, 12, (3, T, H, W), generator=torch.Generator().manual_seed(1))
    labels = torch.arange(3)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(2)
    for _ in range(150):
        loss = model.training_loss(clips.repeat(4, 1, 1, 1), labels.repeat(4), generator=g).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    kw = {"steps": 6} if kind == "maskgit" else {}
    samples = model.generate(labels=labels.repeat(2), temperature=0.5, generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(samples, clips.repeat(2, 1, 1, 1)), float(loss.detach())
    predicted = model.generate(labels=labels, prefix=clips[:, :1], temperature=0.5, generator=torch.Generator().manual_seed(4), **kw)
    assert torch.equal(predicted, clips)


@pytest.mark.parametrize("kind", ["gpt", "maskgit"])
def test_guidance_one_equals_the_conditional_model_on_grids(kind):
    """cfg_scale=1 samples the conditional model: same tokens as the guided path with the unconditional logits
    made irrelevant, and greedy guided decoding follows l_u + s (l_c - l_u) computed by separate passes."""
    torch.manual_seed(0)
    model = build_prior(tiny(kind)).eval()
    with torch.no_grad():
        model.transformer.cls_emb.weight.mul_(50)  # the class matters a lot
    labels = torch.tensor([0, 1, 2])
    kw = {"steps": 4} if kind == "maskgit" else {}
    plain = model.generate(labels=labels, cfg_scale=1.0, generator=torch.Generator().manual_seed(5), **kw)
    # Guidance at a scale a hair above 1 is numerically the conditional model: identical samples.
    near = model.generate(labels=labels, cfg_scale=1.0 + 1e-7, generator=torch.Generator().manual_seed(5), **kw)
    assert plain.shape == (3, T, H, W) and torch.equal(plain, near)
    # The guided logits themselves: scale 1 equals the conditional pass exactly.
    from vqgan.models.prior import classifier_free_guidance

    x = torch.randint(0, 12, (3, T * H * W - 1 if kind == "gpt" else T * H * W))
    cond = model(x, labels).logits
    uncond = model(x, torch.full_like(labels, 3)).logits
    torch.testing.assert_close(classifier_free_guidance(cond, uncond, 1.0), cond)
    assert (classifier_free_guidance(cond, uncond, 3.0) - cond).abs().max() > 1e-3
    # Greedy decoding at scale 3 picks the arg-max of the guided logits.
    if kind == "gpt":
        out = model.generate(labels=labels, cfg_scale=3.0, top_k=1, use_cache=False)
        seq = out.flatten(1)
        c, u = model(seq[:, :-1], labels).logits, model(seq[:, :-1], torch.full_like(labels, 3)).logits
        assert torch.equal(classifier_free_guidance(c, u, 3.0).argmax(-1), seq)


# -- quality figures ----------------------------------------------------------------------------------------------
def test_frame_prediction_scores_per_frame_and_future_means():
    from vqgan.metrics.video import frame_prediction_scores, motion_profile

    g = torch.Generator().manual_seed(0)
    target = torch.rand(3, 1, 4, 16, 16, generator=g) * 2 - 1
    pred = target.clone()
    pred[:, :, 2:] += 0.1 * torch.randn(3, 1, 2, 16, 16, generator=g)
    s = frame_prediction_scores(pred, target, context_frames=2)
    # Identical frames: PSNR at its cap (8-bit quantisation noise), so means over clips stay finite.
    assert len(s["psnr_per_frame"]) == 4 and s["psnr_per_frame"][0] == pytest.approx(58.92, abs=0.01)
    assert s["ssim_per_frame"][:2] == [1.0, 1.0] and s["ssim_future"] < 0.99
    # Noise of std 0.1 in [-1, 1] is 0.05 in [0, 1]: PSNR about 26 dB (clamping trims a little).
    assert 24 < s["psnr_future"] < 28
    assert s["psnr_future"] == pytest.approx(sum(s["psnr_per_frame"][2:]) / 2, abs=1e-2)
    with pytest.raises(ValueError, match="context_frames"):
        frame_prediction_scores(pred, target, context_frames=4)
    # Motion: a still clip has none, a clip that jumps by 1 (in [-1, 1]) moves 0.5 per transition.
    still = torch.zeros(2, 1, 3, 4, 4)
    assert motion_profile(still).tolist() == [0.0, 0.0]
    jump = torch.stack([torch.zeros(1, 4, 4), torch.ones(1, 4, 4), torch.zeros(1, 4, 4)], 1)[None]
    torch.testing.assert_close(motion_profile(jump), torch.tensor([0.5, 0.5]))


class _StandInI3D(torch.nn.Module):
    """Tiny network with I3D's TorchScript call signature: a fixed 3D conv, then mean and spread per channel."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(3, 4, 3, stride=(1, 8, 8), padding=1)

    def forward(self, x: torch.Tensor, rescale: bool = True, resize: bool = True, return_features: bool = False):
        h = torch.relu(self.conv(x))
        return torch.cat([h.mean((2, 3, 4)), h.flatten(2).std(2)], 1)


def test_fvd_from_a_torchscript_file_and_the_missing_file_message(tmp_path, monkeypatch):
    from vqgan.losses.perceptual import BackboneWeightsMissing
    from vqgan.metrics.fid import frechet_distance
    from vqgan.metrics.video import I3D_FILE, FrechetVideoDistance, i3d_input

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # no cached file either
    with pytest.raises(BackboneWeightsMissing, match=I3D_FILE) as e:
        FrechetVideoDistance(None)
    assert "no I3D file was given" in str(e.value) and "--fvd-weights" in str(e.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FrechetVideoDistance(tmp_path / "nope.pt")
    not_script = tmp_path / "state.pt"
    torch.save({"w": torch.zeros(1)}, not_script)
    with pytest.raises(ValueError, match="not a TorchScript I3D"):
        FrechetVideoDistance(not_script)

    path = tmp_path / I3D_FILE
    torch.jit.script(_StandInI3D()).save(str(path))
    g = torch.Generator().manual_seed(0)
    real = torch.rand(12, 1, 3, 16, 16, generator=g) * 2 - 1
    fvd = FrechetVideoDistance(path, resolution=32)
    assert i3d_input(real[:2], 32).shape == (2, 3, 3, 32, 32)
    for half in real.split(6):
        fvd.update(half, real=True)
        fvd.update(half, real=False)
    assert fvd.compute() == pytest.approx(0.0, abs=1e-6)  # the same set
    # Another set: the Fréchet distance of the features, computed here directly.
    other = (real * 0.5 + 0.3).clamp(-1, 1)
    fvd2 = FrechetVideoDistance(path, resolution=32)
    fvd2.update(real, real=True)
    fvd2.update(other, real=False)
    net = _StandInI3D()
    with torch.no_grad():
        a, b = (net(i3d_input(x, 32)).double() for x in (real, other))
    expected = frechet_distance(a.mean(0), torch.cov(a.T), b.mean(0), torch.cov(b.T))
    assert fvd2.compute() == pytest.approx(expected, rel=1e-4) and expected > 1e-3
    # The hub cache is used when no path is given.
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / I3D_FILE).write_bytes(path.read_bytes())
    assert FrechetVideoDistance(None, resolution=32).features_of(real[:2]).shape == (2, 8)


# -- encoding clips into token grids ------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["video3d", "image"])
def test_encode_moving_digits_clips_into_labelled_token_grids_resumably(tmp_path, arch):
    from vqgan.data.synthetic import MovingDigits
    from vqgan.data.tokens import TokenDataset, encode_dataset
    from vqgan.models import build_model
    from vqgan.registry import get_preset

    torch.manual_seed(0)
    name = "test-video3d" if arch == "video3d" else "test-vq"
    cfg = get_preset(name).model
    cfg.in_channels, cfg.resolution = 1, 16
    model = build_model(cfg).eval()
    ds = MovingDigits(length=5, resolution=16, frames=5, num_digits=1, seed=0)
    out = tmp_path / "tokens"
    m = encode_dataset(model, ds, out, shard_size=2, batch_size=2, progress=False, max_shards=2)
    assert not m.complete and len(m.shards) == 2
    m = encode_dataset(model, ds, out, shard_size=2, batch_size=2, progress=False)  # resumes at shard 2
    assert m.complete and m.num_written == 5
    t = 3 if arch == "video3d" else 5  # the causal 3D tokenizer halves time (1 + 4 / 2), an image one keeps frames
    h = model.config.latent_resolution
    assert m.token_shape == [t, h, h] and m.class_names == [str(k) for k in range(10)] and m.num_classes == 10
    tokens = TokenDataset(out)
    assert tokens[3]["tokens"].shape == (t, h, h) and int(tokens[3]["label"]) == int(ds[3]["label"])
    # The grids are the model's codes of the clips (frame by frame for the image model).
    with torch.no_grad():
        clip = ds[4]["image"][None]
        want = model.encode(clip).indices[0] if arch == "video3d" else model.encode(clip[0].transpose(0, 1)).indices
    assert torch.equal(tokens[4]["tokens"], want.long())


# -- end to end: encode, fit-prior, sample ------------------------------------------------------------------------
def test_video_prior_config_file_mirrors_its_preset():
    from pathlib import Path

    from vqgan.config import to_dict
    from vqgan.models.prior import get_prior_preset, load_prior_config

    cfg = load_prior_config(Path(__file__).resolve().parents[1] / "configs" / "prior_video_digits.yaml")
    got, want = to_dict(cfg), to_dict(get_prior_preset("moving-digits-video-gpt"))
    got.pop("name"), want.pop("name")
    assert got == want


@pytest.mark.parametrize("kind", ["gpt", "maskgit"])
def test_class_conditional_clip_sample_and_frame_prediction_end_to_end(tmp_path, kind, capsys):
    """A tiny clip prior trained two steps on encoded moving digits: `vqgan sample --class` decodes clips of the
    right shape written as MP4 (read back with PyAV) and GIF; `--prefix-frames` keeps the given frames' codes."""
    import json

    import av
    from safetensors.torch import load_file

    from vqgan.cli import main
    from vqgan.data.synthetic import MovingDigits
    from vqgan.data.tokens import encode_dataset
    from vqgan.models import build_model
    from vqgan.models.prior import get_prior_preset
    from vqgan.registry import get_preset
    from vqgan.train.prior import fit_prior
    from vqgan.video_generation import encode_clips
    from vqgan.viz.video import write_video

    torch.manual_seed(0)
    tok = build_model(get_preset("test-video3d").model).eval()  # 16x16 grey, f4 t2, 32 codes
    tok_dir = tmp_path / "tok"
    tok.save_pretrained(str(tok_dir))
    ds = MovingDigits(length=8, resolution=16, frames=5, num_digits=1, seed=0)
    encode_dataset(tok, ds, tmp_path / "tokens", shard_size=8, batch_size=4, progress=False,
                   source={"tokenizer": str(tok_dir)})
    cfg = get_prior_preset(f"test-video-{kind}")
    cfg.train.max_steps, cfg.train.logger = 2, "none"
    metrics = fit_prior(cfg, tmp_path / "tokens", tmp_path / "run")
    assert metrics["steps"] == 2
    ckpt = str(tmp_path / "run" / "checkpoints" / "last.ckpt")

    capsys.readouterr()
    out = tmp_path / "samples"
    assert main(["sample", "--prior", ckpt, "--num", "3", "--class", "7", "--cfg-scale", "2.0", "--steps", "4",
                 "--output", str(out)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["num"] == 3 and result["frames"] == 5
    clips = load_file(str(out / "clips.safetensors"))["clips"]
    assert clips.shape == (3, 1, 5, 16, 16) and float(clips.abs().max()) <= 1.0
    assert load_file(str(out / "tokens.safetensors"))["labels"].tolist() == [7, 7, 7]
    with av.open(str(out / "grid.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 5 and frames[0].shape[2] == 3 and frames[0].shape[1] >= 3 * 16
    assert (out / "grid.gif").is_file() and (out / "grid_frames.png").is_file()

    # Frame prediction from clips given as files: the codes of the first 3 frames (2 latent frames) are kept.
    given = tmp_path / "given"
    truth = torch.stack([MovingDigits(length=2, resolution=16, frames=5, num_digits=1, seed=9)[i]["image"] for i in range(2)])
    for i, clip in enumerate(truth):
        write_video(clip, given / f"clip{i}.gif")
    pred = tmp_path / "pred"
    assert main(["sample", "--prior", ckpt, "--prefix-frames", "3", "--input", str(given), "--steps", "4",
                 "--output", str(pred)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(result["psnr_per_frame"]) == 5 and result["prefix_latent_frames"] == 2
    tokens = load_file(str(pred / "tokens.safetensors"))["tokens"]
    from vqgan.video_generation import load_clips

    read, _ = load_clips(given, 5, 16, 1)
    assert torch.equal(tokens[:, :2], encode_clips(tok, read)[:, :2])
    assert (pred / "prediction.mp4").is_file() and (pred / "clips" / "prediction_001.gif").is_file()
    # Frames that a latent frame would only partly cover are refused with the reason.
    assert main(["sample", "--prior", ckpt, "--prefix-frames", "2", "--input", str(given), "--output", str(pred)]) == 2
