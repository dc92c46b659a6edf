"""The whole stage-2 chain on the built-in photos with tiny presets: fit (stage 1) -> encode -> fit-prior ->
sample, through the command line, plus resumption, MaskGIT and the configuration files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image
from safetensors.torch import load_file

from vqgan.cli import main
from vqgan.config import ConfigError
from vqgan.models.prior import get_prior_preset, load_prior_config
from vqgan.registry import get_preset

ROOT = Path(__file__).resolve().parents[1]


# One intra-op thread for the whole module (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    """A tiny stage-1 tokenizer (2 steps) and its token folder of the built-in training crops."""
    from vqgan.train import fit

    root = tmp_path_factory.mktemp("chain")
    fit(get_preset("test-taming"), root / "stage1")
    ckpt = root / "stage1" / "checkpoints" / "last.ckpt"
    out = root / "tokens"
    assert main(["encode", "--ckpt", str(ckpt), "--output", str(out), "--shard-size", "16", "--progress", "false"]) == 0
    return ckpt, out


def test_encode_writes_labelled_shards_of_the_builtin_photos(tokens):
    _, out = tokens
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["num_items"] == 32 and len(manifest["shards"]) == 2
    assert manifest["codebook_size"] == 32 and manifest["token_shape"] == [8, 8] and manifest["num_classes"] == 9
    shard = load_file(str(out / "shard_00000.safetensors"))
    assert shard["indices"].shape == (16, 8, 8) and int(shard["indices"].max()) < 32
    assert 0 <= int(shard["labels"].min()) and int(shard["labels"].max()) < 9


def test_fit_prior_resume_and_sample(tokens, tmp_path, capsys):
    ckpt, out = tokens
    run = tmp_path / "gpt"
    args = ["fit-prior", "--preset", "test-gpt", "--tokens", str(out), "--run-dir", str(run)]
    assert main([*args, "--max-steps", "2"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 2
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]), rel=1e-5)
    assert 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["sample_code_tv_distance"] <= 1
    assert {p.name for p in (run / "checkpoints").iterdir()} >= {"last.ckpt", "best.ckpt"}
    assert (run / "samples" / "codes_0000002.png").is_file()
    assert (run / "samples" / "step_0000002.png").is_file()  # decoded with the tokenizer named by the tokens
    assert list((run / "logs").glob("events.out.tfevents.*"))
    assert "vocab_size: 32" in (run / "config.yaml").read_text()

    # Resume from last.ckpt to 4 steps.
    assert main([*args, "--max-steps", "4", "--resume", "last"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["resumed_from"].endswith("last.ckpt")

    capsys.readouterr()
    samples = tmp_path / "samples"
    rc = main(["sample", "--prior", str(run / "checkpoints" / "last.ckpt"), "--num", "5", "--class", "chelsea",
               "--cfg-scale", "2.0", "--top-k", "8", "--temperature", "0.9", "--output", str(samples)])
    assert rc == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["num"] == 5 and 0 <= result["code_tv_distance"] <= 1
    assert sorted(p.name for p in (samples / "images").iterdir()) == [f"sample_{i:04d}.png" for i in range(5)]
    assert Image.open(samples / "images" / "sample_0000.png").size == (16, 16)
    assert (samples / "grid.png").is_file()
    saved = load_file(str(samples / "tokens.safetensors"))
    assert saved["tokens"].shape == (5, 8, 8) and saved["labels"].tolist() == [1] * 5  # chelsea is class 1
    # A class that does not exist is an error with the choices, not a traceback.
    assert main(["sample", "--prior", str(run / "checkpoints" / "last.ckpt"), "--class", "zebra",
                 "--output", str(samples)]) == 2


def test_maskgit_prior_trains_and_samples(tokens, tmp_path):
    from vqgan.train.prior import fit_prior, generate_images, load_prior

    _, out = tokens
    cfg = get_prior_preset("test-maskgit")
    cfg.train.max_steps = 2
    metrics = fit_prior(cfg, out, tmp_path / "mg")
    assert metrics["steps"] == 2 and "sample_code_usage" in metrics
    model, loaded, meta = load_prior(tmp_path / "mg" / "checkpoints" / "last.ckpt")
    assert loaded.model.kind == "maskgit" and meta["class_names"][0] == "astronaut"
    result = generate_images(tmp_path / "mg" / "checkpoints" / "last.ckpt", tmp_path / "s", num=3, class_="all",
                             steps=4)
    assert result["kind"] == "maskgit"
    assert load_file(str(tmp_path / "s" / "tokens.safetensors"))["labels"].tolist() == [0, 1, 2]


def test_prior_configs_load_with_overrides():
    for kind in ("gpt", "maskgit"):
        cfg = load_prior_config(ROOT / "configs" / f"prior_{kind}.yaml", ["--model.n_layer", "2", "--train.lr=1e-3"])
        assert cfg.model.kind == kind and cfg.model.n_layer == 2 and cfg.train.lr == 1e-3
        cfg.validate()
    with pytest.raises(ConfigError):
        load_prior_config(ROOT / "configs" / "prior_gpt.yaml", ["--model.n_layers", "2"])
    with pytest.raises(ConfigError, match="n_head"):
        load_prior_config(overrides=["--model.n_embd", "30", "--model.n_head", "4"]).validate()
    # Multi-node prior training: machines are a config value like for stage 1.
    assert load_prior_config(overrides=["--train.num_nodes", "2"]).train.num_nodes == 2
    with pytest.raises(ConfigError, match="num_nodes"):
        load_prior_config(overrides=["--train.num_nodes", "0"]).validate()
