"""The flow-matching prior (issue 14): the objective against a hand computation, the ODE solvers' orders, a prior
that overfits a handful of latent maps and reproduces them, classifier-free guidance, class conditioning, the
whole-set normalisation statistics, the latent folders and the decode path (unproject -> snap -> decode)."""

from __future__ import annotations

import math

import pytest
import torch

from vqgan.config import ConfigError, ModelConfig, QuantizerConfig
from vqgan.data.latents import LatentDataset
from vqgan.data.tokens import TokenFolderError, encode_dataset
from vqgan.interop.projection import LatentProjection, ProjectionConfig, channel_statistics, fit_projection
from vqgan.models import VQModel
from vqgan.models.prior import FlowPrior, PriorModelConfig, build_prior, flow_matching_target, solve_ode
from vqgan.models.prior.flow import sample_time
from vqgan.models.prior.latent_space import decode_latents

pytestmark = pytest.mark.usefixtures("one_thread")


def _flow_config(**kw) -> PriorModelConfig:
    base = dict(kind="flow", token_height=4, token_width=4, latent_channels=2, n_layer=2, n_head=2, n_embd=32,
                num_classes=4, cond_dropout=0.3)
    return PriorModelConfig(**{**base, **kw})


def _randomised(model: FlowPrior, seed: int = 0) -> FlowPrior:
    """adaLN-Zero starts every block (and the output) at zero: give all weights random values so that the
    network's output depends on its inputs before any training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def _tokenizer(embed_dim: int = 8) -> VQModel:
    torch.manual_seed(0)
    cfg = ModelConfig(ch=8, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], z_channels=8, embed_dim=embed_dim,
                      resolution=16, num_groups=8,
                      quantizer=QuantizerConfig(kind="vq", codebook_size=32, kmeans_init=False))
    return VQModel(cfg).eval()


# -- the objective -------------------------------------------------------------------------------------------
def test_flow_matching_target_and_loss_equal_a_hand_computation():
    x0 = torch.tensor([[1.0, -2.0], [0.5, 0.0]]).view(2, 1, 1, 2)
    x1 = torch.tensor([[3.0, 2.0], [-1.5, 4.0]]).view(2, 1, 1, 2)
    t = torch.tensor([0.25, 0.5])
    x_t, v = flow_matching_target(x0, x1, t)
    # x_t = (1 - t) x0 + t x1; v = x1 - x0, element by element.
    assert x_t.flatten().tolist() == [0.75 * 1 + 0.25 * 3, 0.75 * -2 + 0.25 * 2, 0.5 * 0.5 + 0.5 * -1.5, 0.5 * 0 + 0.5 * 4]
    assert v.flatten().tolist() == [2.0, 4.0, -2.0, 4.0]

    model = _randomised(build_prior(_flow_config(num_classes=0)))
    model.set_statistics(torch.tensor([0.5, -1.0]), torch.tensor([2.0, 0.5]))
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(3, 2, 4, 4, generator=g)
    noise = torch.randn(3, 2, 4, 4, generator=g)
    t = torch.tensor([0.1, 0.6, 0.9])
    out = model.training_loss(latents, noise=noise, t=t)
    x1n = (latents - torch.tensor([0.5, -1.0]).view(1, 2, 1, 1)) / torch.tensor([2.0, 0.5]).view(1, 2, 1, 1)
    xt = (1 - t.view(3, 1, 1, 1)) * noise + t.view(3, 1, 1, 1) * x1n
    expected = ((model(xt, t) - (x1n - noise)) ** 2).mean()
    assert float(out.loss) == pytest.approx(float(expected), rel=1e-5)
    assert set(out.logs) == {"loss_t<0.5", "loss_t>=0.5"}


def test_time_sampling_uniform_and_logit_normal():
    g = torch.Generator().manual_seed(0)
    u = sample_time(20000, "uniform", generator=g)
    ln = sample_time(20000, "logit_normal", 0.0, 1.0, generator=g)
    assert 0 < float(u.min()) and float(u.max()) < 1 and float(ln.min()) > 0 and float(ln.max()) < 1
    assert float(u.mean()) == pytest.approx(0.5, abs=0.01)
    # The logit-normal concentrates on the middle of the path: its logit is N(0, 1).
    logit = torch.log(ln / (1 - ln))
    assert float(logit.mean()) == pytest.approx(0.0, abs=0.03) and float(logit.std()) == pytest.approx(1.0, abs=0.03)
    assert float(((u - 0.5).abs() < 0.25).float().mean()) < float(((ln - 0.5).abs() < 0.25).float().mean())
    with pytest.raises(ValueError, match="time sampling"):
        sample_time(2, "beta")  # type: ignore[arg-type]


def test_solvers_converge_at_their_order_on_a_known_ode():
    # dx/dt = x cos(t) has the solution x(1) = x(0) exp(sin 1).
    x0 = torch.tensor([[1.0, -0.5]], dtype=torch.float64)
    exact = x0 * math.exp(math.sin(1.0))

    def velocity(x, t):
        return x * torch.cos(t)[:, None]

    err = {(m, n): float((solve_ode(velocity, x0, n, m) - exact).abs().max()) for m in ("euler", "heun") for n in (4, 8)}
    assert err["euler", 8] / err["euler", 4] == pytest.approx(0.5, abs=0.1)  # first order
    assert err["heun", 8] / err["heun", 4] == pytest.approx(0.25, abs=0.06)  # second order
    assert err["heun", 4] < err["euler", 4] / 2
    final, trajectory = solve_ode(velocity, x0, 5, "heun", return_trajectory=True)
    assert len(trajectory) == 6 and torch.equal(trajectory[0], x0) and torch.equal(trajectory[-1], final)
    with pytest.raises(ValueError, match="sampler"):
        solve_ode(velocity, x0, 4, "rk4")  # type: ignore[arg-type]


# -- a prior that overfits four latent maps -----------------------------------------------------------------
@pytest.fixture(scope="module")
def overfit(one_thread):
    torch.manual_seed(0)
    model = build_prior(_flow_config())
    g = torch.Generator().manual_seed(0)
    data = torch.randn(4, 2, 4, 4, generator=g) * 2 + 1
    labels = torch.arange(4)
    mean, std, _ = channel_statistics([data[:3], data[3:]])
    model.set_statistics(mean, std)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    idx = torch.arange(4).repeat(8)
    for _ in range(300):
        loss = model.training_loss(data[idx], labels[idx], generator=g).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), data


def test_overfit_prior_reproduces_its_maps_with_many_euler_steps(overfit):
    model, data = overfit
    labels = torch.arange(8) % 4
    samples = model.generate(labels=labels, steps=100, sampler="euler", generator=torch.Generator().manual_seed(1))
    rel = (samples - data[labels]).flatten(1).norm(dim=1) / data[labels].flatten(1).norm(dim=1)
    assert float(rel.max()) < 0.3, rel  # every sample lands on its class's map
    # ... and far closer to it than to the other maps (the nearest other map is >= 60% of a map's norm away).
    others = torch.cdist(samples.flatten(1), data.flatten(1))
    others[torch.arange(8), labels] = float("inf")
    assert float((others.min(1).values / data[labels].flatten(1).norm(dim=1)).min()) > 2 * float(rel.max())


def test_heun_with_few_steps_is_closer_to_the_ode_solution_than_euler(overfit):
    model, _ = overfit
    noise = torch.randn(8, 2, 4, 4, generator=torch.Generator().manual_seed(2))
    # Unconditional samples: the flow to a four-point distribution curves, so the solver's order shows.
    reference = model.generate(noise=noise, steps=200, sampler="euler")
    for steps in (3, 6):
        euler = model.generate(noise=noise, steps=steps, sampler="euler")
        heun = model.generate(noise=noise, steps=steps, sampler="heun")
        assert float((heun - reference).norm()) < float((euler - reference).norm()), steps


def test_guidance_one_is_the_conditional_model_and_guidance_mixes_velocities(overfit):
    model, _ = overfit
    g = torch.Generator().manual_seed(3)
    x, t, labels = torch.randn(4, 2, 4, 4, generator=g), torch.rand(4, generator=g), torch.tensor([0, 1, 2, 3])
    torch.testing.assert_close(model.velocity(x, t, labels, cfg_scale=1.0), model(x, t, labels))
    cond, uncond = model(x, t, labels), model(x, t, None)
    torch.testing.assert_close(model.velocity(x, t, labels, 3.0), uncond + 3.0 * (cond - uncond), atol=1e-5, rtol=1e-5)
    noise = torch.randn(4, 2, 4, 4, generator=g)
    a = model.generate(labels=labels, noise=noise, steps=4, cfg_scale=1.0)
    b = model.generate(labels=labels, noise=noise, steps=4, cfg_scale=2.0)
    assert not torch.allclose(a, b)


def test_class_conditioning_changes_samples(overfit):
    model, data = overfit
    noise = torch.randn(4, 2, 4, 4, generator=torch.Generator().manual_seed(4)).repeat(2, 1, 1, 1)
    labels = torch.tensor([0, 1, 2, 3, 1, 2, 3, 0])
    s = model.generate(labels=labels, noise=noise, steps=20)
    # Same noise, another class: another map (the one of that class).
    assert float((s[:4] - s[4:]).flatten(1).norm(dim=1).min()) > 3.0
    nearest = torch.cdist(s.flatten(1), data.flatten(1)).argmin(1)
    assert torch.equal(nearest, labels)


def test_flow_config_is_validated():
    with pytest.raises(ConfigError, match="patch_size"):
        _flow_config(patch_size=3).validate()
    model = build_prior(_flow_config(patch_size=2, token_height=4, token_width=8))
    assert model(torch.zeros(2, 2, 4, 8), torch.rand(2)).shape == (2, 2, 4, 8)
    with pytest.raises(ValueError, match="this prior models"):
        model(torch.zeros(2, 2, 4, 4), torch.rand(2))


# -- normalisation and latent folders ------------------------------------------------------------------------
class _Images(torch.utils.data.Dataset):
    classes = ["a", "b"]

    def __init__(self, n: int):
        g = torch.Generator().manual_seed(6)
        self.x = torch.rand(n, 3, 16, 16, generator=g) * 2 - 1

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"image": self.x[i], "label": torch.tensor(i % 2)}


def test_latent_dataset_reads_continuous_shards_projects_and_matches_direct_statistics(tmp_path):
    tok = _tokenizer()
    images = _Images(10)
    m = encode_dataset(tok, images, tmp_path / "lat", what="continuous", shard_size=4, batch_size=4, progress=False)
    assert m.complete and m.what == "continuous" and m.token_shape == [8, 8, 8]
    ds = LatentDataset(tmp_path / "lat")
    with torch.no_grad():
        direct = tok.encode_latents(images.x)
    torch.testing.assert_close(ds.latents, direct, atol=1e-5, rtol=1e-5)
    assert ds[3]["label"] == 1 and ds.latent_shape == (8, 8, 8)
    # Whole-set statistics (streamed in uneven batches) equal a direct computation over a subset's latents.
    mean, std = ds.subset(range(1, 10)).statistics(batch_size=4)
    flat = direct[1:].transpose(0, 1).reshape(8, -1)
    torch.testing.assert_close(mean, flat.mean(1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(std, flat.std(1), atol=1e-5, rtol=1e-5)

    proj = LatentProjection(ProjectionConfig(8, 4, source="continuous"))
    projected = LatentDataset(tmp_path / "lat", projection=proj)
    with torch.no_grad():
        torch.testing.assert_close(projected.latents, proj.project(direct), atol=1e-5, rtol=1e-5)
    with pytest.raises(TokenFolderError, match="reads quantized latents"):
        LatentDataset(tmp_path / "lat", projection=LatentProjection(ProjectionConfig(8, 4, source="quantized")))
    encode_dataset(tok, images, tmp_path / "idx", what="indices", shard_size=4, progress=False)
    with pytest.raises(TokenFolderError, match="--what continuous"):
        LatentDataset(tmp_path / "idx")


def test_continuous_encoding_resumes(tmp_path):
    tok, images = _tokenizer(), _Images(10)
    part = encode_dataset(tok, images, tmp_path / "lat", what="continuous", shard_size=4, max_shards=1, progress=False)
    assert not part.complete and len(part.shards) == 1
    full = encode_dataset(tok, images, tmp_path / "lat", what="continuous", shard_size=4, progress=False)
    assert full.complete and len(full.shards) == 3
    with torch.no_grad():
        torch.testing.assert_close(LatentDataset(tmp_path / "lat").latents, tok.encode_latents(images.x), atol=1e-5, rtol=1e-5)


# -- projection and decoding ---------------------------------------------------------------------------------
def test_unproject_project_round_trip_and_decode_through_an_invertible_projection():
    tok = _tokenizer()
    x = _Images(4).x
    with torch.no_grad():
        enc = tok.encode(x)
    proj = LatentProjection(ProjectionConfig(8, 8, source="quantized"))
    proj.init_pca(enc.quantized)  # full rank: an invertible linear map and its inverse
    with torch.no_grad():
        p = proj.project(enc.quantized)
        torch.testing.assert_close(proj.unproject(p), enc.quantized, atol=1e-4, rtol=0)
        images = decode_latents(tok, p, proj)
        torch.testing.assert_close(images, tok.decode(enc.quantized).clamp(-1, 1), atol=1e-4, rtol=0)
        # Snapped to the nearest codes, the latents decode exactly as the codes themselves.
        torch.testing.assert_close(decode_latents(tok, p, proj, snap=True),
                                   tok.decode_codes(enc.indices).clamp(-1, 1), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="pass the projection"):
        decode_latents(tok, p[:, :4])


def test_sample_unproject_decode_writes_images_of_the_right_size(tmp_path):
    from PIL import Image

    from vqgan.viz.samples import save_image_grid, save_images

    tok = _tokenizer()
    proj = LatentProjection(ProjectionConfig(8, 4)).eval()
    prior = _randomised(build_prior(_flow_config(latent_channels=4, token_height=8, token_width=8, num_classes=0)))
    latents = prior.generate(num=3, steps=2, generator=torch.Generator().manual_seed(8))
    assert latents.shape == (3, 4, 8, 8)
    images = decode_latents(tok, latents, proj, snap=True)
    assert images.shape == (3, 3, 16, 16) and float(images.abs().max()) <= 1
    save_images(images, tmp_path / "images", [f"s{i}" for i in range(3)])
    save_image_grid(images, tmp_path / "grid.png", ncol=3)
    assert Image.open(tmp_path / "images" / "s0.png").size == (16, 16)
    assert (tmp_path / "grid.png").is_file()


def test_fit_projection_can_train_the_encoder_jointly():
    model = _tokenizer()
    g = torch.Generator().manual_seed(9)
    batches = [torch.rand(4, 3, 16, 16, generator=g) * 2 - 1 for _ in range(2)]
    enc_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    fit = fit_projection(model, batches, out_channels=2, steps=10, lr=3e-3, source="continuous", train_encoder=True)
    assert fit.summary["train_encoder"] and fit.summary["final_loss"] < fit.summary["initial_loss"]
    assert any(not torch.equal(enc_before[k], v) for k, v in model.encoder.state_dict().items())
    assert all(not p.requires_grad for p in model.parameters())


def test_trajectory_images_run_from_noise_to_the_sample():
    from vqgan.models.prior.latent_space import trajectory_images

    tok = _tokenizer()
    prior = _randomised(build_prior(_flow_config(latent_channels=8, token_height=8, token_width=8, num_classes=0)))
    final, trajectory = prior.generate(num=2, steps=8, sampler="euler", return_trajectory=True,
                                       generator=torch.Generator().manual_seed(10))
    grid = trajectory_images(tok, trajectory, columns=5)
    assert grid.shape == (2 * 5, 3, 16, 16)
    torch.testing.assert_close(grid[4::5], decode_latents(tok, final))  # the last column is the sample
    torch.testing.assert_close(grid[0::5], decode_latents(tok, trajectory[0]))  # the first, the noise


def test_priors_benchmark_dry_run(tmp_path, monkeypatch, capsys):
    """benchmarks/priors.py --dry-run: every path (tokenizers, the three priors, the VQGAN latents, grids and the
    trajectory figure, the table and the RESULT line) at tiny sizes."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "priors.py"
    spec = importlib.util.spec_from_file_location("priors_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    monkeypatch.setattr(sys, "argv", ["priors.py", "--dry-run", "--out", str(tmp_path / "out"),
                                      "--work", str(tmp_path / "work")])
    bench.main()
    out = capsys.readouterr().out
    result = out.strip().splitlines()[-1]
    assert result.startswith("RESULT ")
    keys = {kv.split("=")[0] for kv in result.split()[1:]}
    assert {"smoke_vqvae_gpt", "smoke_vqvae_maskgit", "smoke_vqvae_flow", "smoke_vqgan_flow", "photos_vqvae_flow"} <= keys
    assert "ranking real < blurred < noise" in out
    for name in ("smoke_vqvae_gpt", "smoke_vqvae_maskgit", "smoke_vqvae_flow", "photos_vqvae_flow_trajectory"):
        assert (tmp_path / "out" / f"{name}.png").is_file()


# -- through the commands: fit-prior and sample ---------------------------------------------------------------
def test_prior_flow_yaml_is_the_quickstart_flow_preset():
    from pathlib import Path

    from vqgan.config import to_dict
    from vqgan.models.prior import get_prior_preset, load_prior_config

    yaml = load_prior_config(Path(__file__).resolve().parents[1] / "configs" / "prior_flow.yaml")
    preset = get_prior_preset("quickstart-flow")
    yaml.name = preset.name
    assert to_dict(yaml) == to_dict(preset)


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory, one_thread):
    """A test-taming tokenizer (saved as our folder format), its continuous latents, and a test-flow prior run."""
    from vqgan.cli import main as cli
    from vqgan.registry import create_model

    root = tmp_path_factory.mktemp("flow")
    torch.manual_seed(0)
    tok = create_model("test-taming").eval()
    tok.save_pretrained(str(root / "tok"))
    data = ["--data.resolution", "16", "--data.builtin_train_crops", "24", "--data.val_size", "8"]
    assert cli(["encode", "--ckpt", str(root / "tok"), "--what", "continuous", "--output", str(root / "lat"),
                "--progress", "false", *data]) == 0
    assert cli(["fit-prior", "--preset", "test-flow", "--tokens", str(root / "lat"), "--run-dir", str(root / "run"),
                "--train.logger", "tensorboard"]) == 0
    return root


def test_fit_prior_trains_a_flow_prior_on_latents_and_stores_the_statistics(flow_run):
    import json

    from vqgan.models.io import load_prior

    run = flow_run / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 4 and math.isfinite(metrics["loss"])
    for name in ("step_0000004.png", "trajectory_0000004.png", "loss.png"):
        assert (run / "samples" / name).is_file(), name
    model, cfg, meta = load_prior(run / "checkpoints" / "last.ckpt")
    assert isinstance(model, FlowPrior) and cfg.model.latent_channels == 8 and meta["what"] == "continuous"
    # The statistics in the checkpoint are those of the training latents (the held-out quarter excluded).
    ds = LatentDataset(flow_run / "lat")
    n = len(ds)
    val = set(torch.linspace(0, n - 1, max(1, round(n * 0.25))).round().long().tolist())
    mean, std = ds.subset([i for i in range(n) if i not in val]).statistics()
    torch.testing.assert_close(model.latent_mean, mean)
    torch.testing.assert_close(model.latent_std, std)


def test_sample_decodes_a_flow_prior_to_images_of_the_tokenizer_size(flow_run, capsys):
    import json

    from PIL import Image
    from safetensors.torch import load_file

    from vqgan.cli import main as cli

    out = flow_run / "samples"
    assert cli(["sample", "--prior", str(flow_run / "run" / "checkpoints" / "last.ckpt"), "--num", "5",
                "--class", "all", "--steps", "3", "--sampler", "euler", "--snap", "true", "--output", str(out)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (result["kind"], result["steps"], result["sampler"], result["snap"]) == ("flow", 3, "euler", True)
    assert Image.open(out / "images" / "sample_0000.png").size == (16, 16)
    assert len(list((out / "images").glob("*.png"))) == 5 and (out / "grid.png").is_file()
    assert Image.open(out / "trajectory.png").size[0] > Image.open(out / "grid.png").size[0] / 2  # 4 columns
    saved = load_file(str(out / "latents.safetensors"))
    assert saved["latents"].shape == (5, 8, 8, 8) and saved["labels"].tolist() == [0, 1, 2, 3, 4]


def test_fit_prior_refuses_the_wrong_kind_of_folder(flow_run, tmp_path):
    from vqgan.cli import main as cli

    assert cli(["fit-prior", "--preset", "test-gpt", "--tokens", str(flow_run / "lat"),
                "--run-dir", str(tmp_path / "r")]) != 0
