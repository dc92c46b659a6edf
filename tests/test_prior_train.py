"""The whole stage-2 chain on the built-in photos with tiny presets: fit (stage 1) -> encode -> fit-prior ->
sample, through the command line, plus resumption, MaskGIT and the configuration files."""

from __future__ import annotations

import json
import math
import os
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
    from vqgan.inference import generate_images
    from vqgan.models.io import load_prior
    from vqgan.train.prior import fit_prior

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


@pytest.fixture(scope="module")
def gpt_prior(tokens, tmp_path_factory):
    """A 1-step GPT prior on the token folder."""
    from vqgan.train.prior import fit_prior

    cfg = get_prior_preset("test-gpt")
    cfg.train.max_steps, cfg.train.num_samples = 1, 0
    run = tmp_path_factory.mktemp("gpt")
    fit_prior(cfg, tokens[1], run)
    return run / "checkpoints" / "last.ckpt"


def test_using_trained_models_does_not_import_lightning(tokens, gpt_prior, tmp_path):
    """``import vqgan; vqgan.load_model(...)``, ``load_prior`` and sampling need torch, not the training stack
    (checked in a fresh interpreter, whose ``sys.modules`` is not shared with the tests that train)."""
    import subprocess
    import sys

    ckpt, prior = tokens[0], gpt_prior
    script = f"""
import json, sys
import vqgan
from vqgan.inference import generate_images
model, cfg = vqgan.load_model({str(ckpt)!r})
prior, pcfg, meta = vqgan.load_prior({str(prior)!r})
result = generate_images({str(prior)!r}, {str(tmp_path / "s")!r}, tokenizer={str(ckpt)!r}, num=2)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning") or m.startswith("vqgan.train"))
print(json.dumps({{"heavy": heavy, "num": result["num"], "arch": cfg.model.arch, "kind": pcfg.model.kind}}))
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"heavy": [], "num": 2, "arch": "taming", "kind": "gpt"}
    assert (tmp_path / "s" / "grid.png").is_file()
    # The wrong kind of checkpoint says what the file is and which command it belongs to.
    from vqgan.models.io import CheckpointError, load_model, load_prior

    with pytest.raises(CheckpointError, match=r"stage-1 tokenizer checkpoint \(written by `vqgan fit`\)"):
        load_prior(ckpt)
    with pytest.raises(CheckpointError, match=r"stage-2 prior checkpoint .*`vqgan sample --prior`"):
        load_model(prior)


def test_commands_given_the_wrong_kind_of_checkpoint_say_what_it_is(tokens, gpt_prior, tmp_path, capsys):
    ckpt, prior = tokens[0], gpt_prior
    capsys.readouterr()
    cases = [
        (["sample", "--prior", str(ckpt), "--output", str(tmp_path / "s")], str(ckpt),
         "is a stage-1 tokenizer checkpoint (written by `vqgan fit`)"),
        (["encode", "--ckpt", str(prior), "--output", str(tmp_path / "t"), "--progress", "false"], str(prior),
         "is a stage-2 prior checkpoint (written by `vqgan fit-prior`); it belongs to `vqgan sample --prior`"),
        (["convert", "--input", str(prior), "--output", str(tmp_path / "c")], str(prior),
         "is a stage-2 prior checkpoint"),
    ]
    for argv, path, message in cases:
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc in (1, 2) and path in err and message in err and "Traceback" not in err, (argv, err[-800:])
        assert "unknown key" not in err
