"""The training harness shared by stage 1 and the priors: settings, schedule, Trainer, run procedure, epochs, seed
000's chunk schedule, fp16 clipping, and what a user sees (progress label, warnings, failed runs)."""

from __future__ import annotations

import dataclasses
import json
import logging
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from vqgan.config import ConfigError, TrainConfig, TrainerSettings, load_config, to_dict
from vqgan.data.images import collate_skip
from vqgan.data.video import VideoChunks
from vqgan.models.prior.config import PriorTrainConfig, load_prior_config
from vqgan.registry import get_preset
from vqgan.train import fit
from vqgan.train.harness import StepProgressBar, WarmupCosine, build_trainer, resolve_run_dir
from vqgan.train.module import VQGANModule


@pytest.fixture(autouse=True)
def _threads(one_thread_and_own_log_handlers):
    yield


# -- settings and schedule ---------------------------------------------------------------------------------------
def test_both_stages_embed_the_same_trainer_settings():
    shared = {f.name for f in dataclasses.fields(TrainerSettings)}
    assert issubclass(TrainConfig, TrainerSettings) and issubclass(PriorTrainConfig, TrainerSettings)
    assert shared <= {f.name for f in dataclasses.fields(TrainConfig)}
    assert shared <= {f.name for f in dataclasses.fields(PriorTrainConfig)}
    # The YAML keys users rely on stay `train.*` in both, and the new ones work in both.
    stage1 = load_config(None, ["--train.max_epochs", "3", "--train.val_every_n_epochs", "1", "--train.lr", "0.001"])
    prior = load_prior_config(None, ["--train.max_epochs", "3", "--train.checkpoint_every_n_epochs", "2"])
    assert (stage1.train.max_epochs, stage1.train.val_every_n_epochs, stage1.train.lr) == (3, 1, 0.001)
    assert (prior.train.max_epochs, prior.train.checkpoint_every_n_epochs) == (3, 2)
    # The prior keeps its own defaults (AdamW-style betas, cosine, best by the lowest loss).
    assert (prior.train.betas, prior.train.lr_schedule, prior.train.monitor_mode) == ([0.9, 0.95], "cosine", "min")


def test_one_schedule_warmup_then_cosine():
    f = WarmupCosine(warmup=4, total=12, min_ratio=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == pytest.approx(1.0) and f(8) == pytest.approx(0.55) and f(12) == pytest.approx(0.1)
    assert f(100) == pytest.approx(0.1)
    assert WarmupCosine(0, None)(5) == 1.0  # constant after no warm-up
    # Both stages' optimizers are scheduled by it.
    from vqgan.train.prior import PriorModule

    module = VQGANModule(to_dict(get_preset("test-taming")))
    _, [sched] = module.configure_optimizers()
    assert isinstance(sched["scheduler"], torch.optim.lr_scheduler.LambdaLR)
    assert isinstance(sched["scheduler"].lr_lambdas[0], WarmupCosine)
    from vqgan.models.prior.config import get_prior_preset

    prior = PriorModule(to_dict(get_prior_preset("test-gpt")))
    _, [psched] = prior.configure_optimizers()
    lam = psched["scheduler"].lr_lambdas[0]
    assert isinstance(lam, WarmupCosine) and lam.total == get_prior_preset("test-gpt").train.max_steps


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"max_epochs": 0}, "train.max_epochs=0 must be at least 1"),
        ({"val_every_n_epochs": 0}, "train.val_every_n_epochs=0"),
        ({"checkpoint_every_n_epochs": 2, "checkpoint_every_n_steps": 100}, "choose one cadence"),
        ({"val_every_n_epochs": 1, "checkpoint_every_n_steps": 100}, "checkpoint by epochs too"),
        ({"max_epochs": 2, "val_every_n_epochs": 3}, "would never validate"),
        ({"max_epochs": 2, "checkpoint_every_n_epochs": 5}, "no periodic checkpoint"),
    ],
)
def test_epoch_settings_are_checked(overrides, match):
    cfg = get_preset("test-taming")
    for k, v in overrides.items():
        setattr(cfg.train, k, v)
    with pytest.raises(ConfigError, match=match):
        cfg.validate()
    prior = PriorTrainConfig(**overrides)
    with pytest.raises(ConfigError, match=match):
        prior.validate()


def test_trainer_limits_and_cadences(tmp_path):
    steps = TrainerSettings(max_steps=40, val_every_n_steps=10, logger="none", accelerator="cpu")
    t = build_trainer(steps, tmp_path, [], "r")
    assert (t.max_steps, t.max_epochs, t.val_check_interval) == (40, -1, 10)
    epochs = TrainerSettings(max_epochs=6, val_every_n_epochs=2, checkpoint_every_n_epochs=3, logger="none",
                             accelerator="cpu")
    t = build_trainer(epochs, tmp_path, [], "r")
    assert (t.max_steps, t.max_epochs, t.check_val_every_n_epoch) == (-1, 6, 2)
    periodic = [c for c in t.checkpoint_callbacks if c.filename.startswith("step")][0]
    assert periodic._every_n_epochs == 3 and periodic._every_n_train_steps == 0
    # The prior's Trainer comes from the same builder: its checkpoints are guarded against non-finite steps too.
    from vqgan.train.checkpoint import GuardedModelCheckpoint

    t = build_trainer(PriorTrainConfig(logger="none", accelerator="cpu"), tmp_path, [], "prior")
    assert len(t.checkpoint_callbacks) == 2
    assert all(isinstance(c, GuardedModelCheckpoint) for c in t.checkpoint_callbacks)
    assert t.checkpoint_callbacks[0].monitor == "val/loss" and t.checkpoint_callbacks[0].mode == "min"


def test_progress_label_shows_steps_or_epochs():
    bar = StepProgressBar()
    bar._trainer = SimpleNamespace(max_epochs=-1, max_steps=1000, global_step=40)
    assert bar._get_train_description(0) == "Epoch 0 · step 40/1000"  # Lightning's own read "Epoch 0/-2"
    bar._trainer = SimpleNamespace(max_epochs=10, max_steps=-1, global_step=40)
    assert bar._get_train_description(3) == "Epoch 3/9"


def test_run_name_picks_the_run_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_run_dir(None, "exp1") == tmp_path.joinpath("runs", "exp1").relative_to(tmp_path)
    assert str(resolve_run_dir("elsewhere", "exp1")) == "elsewhere"
    with pytest.raises(ConfigError, match="--run-dir DIR or --run-name"):
        resolve_run_dir(None, None)
    with pytest.raises(ConfigError, match="plain name"):
        resolve_run_dir(None, "../up")


# -- an epoch-limited run ------------------------------------------------------------------------------------------
def test_epoch_run_validates_and_checkpoints_by_epoch(tmp_path, monkeypatch):
    """Two epochs of 4 batches, validation every epoch, a checkpoint every epoch, in runs/NAME by --run-name; the
    codebook diagnostics are written although the run is shorter than their interval."""
    monkeypatch.chdir(tmp_path)
    cfg = get_preset("test-resnet")
    cfg.data.builtin_train_crops, cfg.data.batch_size = 16, 4  # 4 batches per epoch
    cfg.train.max_epochs, cfg.train.val_every_n_epochs, cfg.train.checkpoint_every_n_epochs = 2, 1, 1
    cfg.train.keep_last_k, cfg.train.diagnostics_every_n_steps, cfg.train.logger = -1, 50, "none"
    metrics = fit(cfg, run_name="epochs")
    run = tmp_path / "runs" / "epochs"
    assert metrics["steps"] == 8
    assert sorted(p.name for p in (run / "samples").glob("step_*.png")) == ["step_0000004.png", "step_0000008.png"]
    assert {p.name for p in (run / "checkpoints").glob("step*.ckpt")} == {"step0000004.ckpt", "step0000008.ckpt"}
    from vqgan.train.diagnostics import load_diagnostics

    assert load_diagnostics(run)["step"].tolist() == [8]  # recorded at the end (interval 50 never reached)
    assert json.loads((run / "metrics.json").read_text())["steps"] == 8


# -- seed 000's chunk schedule ----------------------------------------------------------------------------------------
class _Clips(torch.utils.data.Dataset):
    """Clips of one frame; the pixel value names the clip."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"image": torch.full((3, 1, 4, 4), float(i))}


def test_chunk_schedule_runs_the_discriminator_in_each_chunks_gan_passes():
    """4 videos, 2 per chunk, 2 reconstruction passes then 1 GAN pass per chunk (seed 000's 10 and 5, shrunk),
    batches of one chunk-pass each: the discriminator runs in passes 3 and 6 of the epoch, in that order, and the
    module's adversarial factor follows."""
    chunks = VideoChunks(_Clips(4), videos_per_chunk=2, epochs_per_chunk=2, frames_as_images=True, seed=0,
                         gan_epochs_per_chunk=1)
    assert len(chunks) == 4 * 3
    loader = DataLoader(chunks, batch_size=2, collate_fn=collate_skip)
    cfg = get_preset("test-taming")
    cfg.loss.disc_start = 0
    module = VQGANModule(to_dict(cfg))
    seen = []
    for batch in loader:
        clips = sorted({int(v) for v in batch["image"].flatten().unique()})
        passes = batch["chunk_pass"].tolist()
        module.on_before_batch_transfer(batch, 0)
        seen.append((clips, passes, module.disc_factor() > 0))
        assert "gan" not in batch and "chunk_pass" not in batch  # consumed before the batch reaches the model
    # Chunk one (two clips) for three passes, then chunk two: GAN only in the third pass of each.
    assert [s[1] for s in seen] == [[0, 0], [1, 1], [2, 2], [0, 0], [1, 1], [2, 2]]
    assert [s[2] for s in seen] == [False, False, True, False, False, True]
    assert seen[0][0] == seen[1][0] == seen[2][0] and seen[3][0] == seen[4][0] == seen[5][0]
    assert sorted(seen[0][0] + seen[3][0]) == [0, 1, 2, 3]
    # A batch straddling a reconstruction and a GAN pass trains without the discriminator.
    mixed = {"image": torch.zeros(2, 3, 4, 4), "gan": torch.tensor([False, True]), "chunk_pass": torch.tensor([1, 2])}
    module.on_before_batch_transfer(mixed, 0)
    assert module.disc_factor() == 0.0


def test_ucf101_preset_uses_seed_000s_schedule():
    cfg = get_preset("seed000-ucf101-vqgan")
    d, t = cfg.data, cfg.train
    assert (d.epochs_per_chunk, d.gan_epochs_per_chunk, t.max_epochs, d.batch_size) == (10, 5, 3, 64)
    assert d.videos_per_chunk and cfg.loss.disc_start == 0
    cfg.validate()
    bad = get_preset("seed000-ucf101-vqgan")
    bad.data.videos_per_chunk = None
    with pytest.raises(ConfigError, match="data.videos_per_chunk"):
        bad.validate()


# -- fp16: clipping sees unscaled gradients ---------------------------------------------------------------------------
class _Scaler:
    def __init__(self, scale):
        self.scale = scale

    def get_scale(self):
        return self.scale

    def is_enabled(self):
        return True


class _ScaledPrecision(L.pytorch.plugins.precision.Precision):
    """What ``16-mixed`` does to gradients, without half precision: the backward pass runs on ``loss * scale`` and
    the gradients are divided by ``scale`` only inside ``optimizer.step()`` (as GradScaler's ``unscale_``)."""

    def __init__(self, scale):
        self.scaler = _Scaler(scale)

    def pre_backward(self, tensor, module):
        return super().pre_backward(tensor * self.scaler.scale, module)

    def optimizer_step(self, optimizer, model, closure, **kwargs):
        closure()
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.div_(self.scaler.scale)
        return optimizer.step(**kwargs)


class _Norms(L.Callback):
    def __init__(self):
        self.norms = []

    def on_train_batch_end(self, trainer, module, *args):
        self.norms.append(float(trainer.callback_metrics["train/grad_norm_g"]))


def _one_step(scale):
    torch.manual_seed(0)
    cfg = get_preset("test-resnet")
    cfg.train.grad_clip = 1e-3  # every step is clipped
    module = VQGANModule(to_dict(cfg))
    x = torch.rand(8, 3, 16, 16) * 2 - 1
    loader = DataLoader([{"image": x[i]} for i in range(8)], batch_size=4)
    probe = _Norms()
    plugins = [_ScaledPrecision(scale)] if scale != 1 else []
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", callbacks=[probe], plugins=plugins,
                        limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(module, loader)
    return torch.cat([p.detach().flatten() for p in module.model.parameters()]), probe.norms


def test_clipping_under_a_loss_scale_matches_unscaled_training():
    """With scaled gradients (``16-mixed``'s GradScaler), clipping and the logged norm must be those of the true
    gradients. Clipping the scaled gradients (the old code) left them ``scale`` times too small after unscaling,
    and logged norms ``scale`` times too large."""
    plain, plain_norms = _one_step(1.0)
    scaled, scaled_norms = _one_step(1024.0)
    assert scaled_norms == pytest.approx(plain_norms, rel=1e-4)
    assert torch.allclose(scaled, plain, atol=1e-6)
    assert min(plain_norms) > 1e-2  # far above the threshold: the clipping acted on every step


# -- what a user sees -----------------------------------------------------------------------------------------------
def test_failed_run_leaves_no_empty_folder_and_keeps_user_files(tmp_path):
    cfg = get_preset("test-resnet")
    cfg.data.kind, cfg.data.root = "folder", str(tmp_path / "no_such_images")
    run = tmp_path / "run"
    with pytest.raises(Exception):  # noqa: B017  (whichever error the data loader raises)
        fit(cfg, run)
    assert not run.exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(Exception):  # noqa: B017
        fit(cfg, mine)
    assert (mine / "notes.txt").read_text() == "keep"


def test_cli_quiet_rank_zero_summary_and_resume_report(tmp_path, capfd, monkeypatch):
    """`vqgan fit` prints one JSON line, none of Lightning's tips; `--resume last` over a truncated newest
    checkpoint says so on stderr; a non-zero rank prints no summary."""
    from vqgan.cli import main

    logging.getLogger("lightning").setLevel(logging.INFO)  # as in a terminal (the test settings quieten it)
    logging.getLogger("lightning.pytorch").setLevel(logging.INFO)
    run = tmp_path / "run"
    args = ["fit", "--preset", "test-resnet", "--run-dir", str(run), "--train.logger", "tensorboard",
            "--train.accelerator", "cpu"]
    assert main(args) == 0
    out, err = capfd.readouterr()
    assert json.loads(out.strip().splitlines()[-1])["steps"] == 2
    assert "litlogger" not in out + err and "eval mode" not in out + err

    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:2000])
    assert main([*args, "--resume", "last", "--max-steps", "3"]) == 0
    out, err = capfd.readouterr()
    assert "cannot resume from" in err and "last.ckpt" in err and "corrupt or truncated" in err

    from lightning.fabric.utilities.rank_zero import rank_zero_only

    monkeypatch.setattr(rank_zero_only, "rank", 1)
    assert main([*args, "--resume", "last", "--max-steps", "4"]) == 0
    out, _ = capfd.readouterr()
    assert not any(line.startswith("{") for line in out.splitlines())


def test_wandb_missing_gives_an_install_hint(tmp_path, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def blocked(name, *args, **kwargs):
        if name == "wandb" or name.startswith("wandb."):
            raise ModuleNotFoundError("No module named 'wandb'", name="wandb")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", blocked)
    from vqgan.cli import main

    rc = main(["fit", "--preset", "test-resnet", "--run-dir", str(tmp_path / "r"), "--train.logger", "wandb"])
    err = capsys.readouterr().err
    assert rc == 2 and "pip install" in err and "wandb" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_wandb_offline_run_logs_losses_usage_and_images(tmp_path, monkeypatch):
    """`--train.logger wandb` in W&B's offline mode: the run folder holds the W&B run with the losses, the codebook
    usage and the reconstruction images, and `vqgan report` still works from the folder."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))  # nothing outside the test's folder
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
    cfg = get_preset("test-resnet")
    cfg.train.logger = "wandb"
    run = tmp_path / "run"
    fit(cfg, run, run_name="offline-test")  # finishes its W&B run
    [run_folder] = list((run / "wandb").glob("offline-run-*"))
    [record_file] = list(run_folder.glob("*.wandb"))
    import time

    for _ in range(120):  # W&B's service process writes the file; wait for the run's exit record
        kinds = [rec.WhichOneof("record_type") for rec in _wandb_records(record_file)]
        if "exit" in kinds:
            break
        time.sleep(0.5)
    keys = set()
    for rec in _wandb_records(record_file):
        if rec.WhichOneof("record_type") == "history":
            keys |= {item.key or item.nested_key[0] for item in rec.history.item}
    assert {"train/rec", "train/total", "val/codebook_usage", "diag/usage"} <= keys, sorted(keys)
    assert "val/reconstructions" in keys, sorted(keys)
    media = list(run_folder.glob("files/media/images/val/reconstructions*.png"))
    assert media

    from vqgan.cli import main

    assert main(["report", "--run-dir", str(run)]) == 0
    assert (run / "report.html").is_file()


def _wandb_records(path):
    """The protobuf records of an offline W&B run file (``run-ID.wandb``): a 7-byte header (``:W&B``, magic,
    version), then LevelDB-log framing (32 KiB blocks; records of crc32, length, type; FULL/FIRST/MIDDLE/LAST).
    wandb >= 0.19 reads these files in its Go core only, so the test reads them itself."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, buf = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # the block's tail is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if length == 0 and kind == 0:
            break
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(buf)
            yield rec
            buf = b""
