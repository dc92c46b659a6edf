"""Crash and resume: a real ``vqgan fit`` process is killed with SIGKILL in the middle of training and resumed
with ``--resume last``; the resumed run's per-step losses and final state equal an uninterrupted run's.

Tolerance: 1e-6 absolute on every logged loss and every tensor of the final checkpoint (weights, EMA codebook,
discriminator and its BatchNorm statistics, Adam moments, scheduler). On CPU with a fixed seed the runs are in
fact bitwise identical; the tolerance only leaves room for a BLAS that reorders sums across thread counts.

Also here: atomic writes, verification of checkpoints (CRC, truncation, wrong content) and the fall-back to the
previous good checkpoint, and that the last K step checkpoints are kept.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from vqgan.models.io import CheckpointError, verify_checkpoint
from vqgan.train.checkpoint import (
    ResumableSampler,
    atomic_torch_save,
    checkpoint_candidates,
    find_resume_checkpoint,
    remove_stale_temporaries,
)

# One thread, and vqgan log handlers restored after each test (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread_and_own_log_handlers")

TOL = 1e-6
MAX_STEPS, KILL_AFTER, KEEP = 12, 5, 2
# test-taming without LPIPS: EMA codebook with dead-code restarts (random), PatchGAN with BatchNorm, adaptive GAN
# weight from step 1; 24 crops / batch 4 = 6 batches per epoch: killed in the first epoch, resumed into the second.
ARGS = [
    "fit", "--preset", "test-taming", "--loss.perceptual", "none", "--data.builtin_train_crops", "24",
    "--train.checkpoint_every_n_steps", "1", "--train.val_every_n_steps", "100", "--train.keep_last_k", str(KEEP),
    "--max-steps", str(MAX_STEPS),
]


def _vqgan() -> list[str]:
    script = Path(sys.executable).with_name("vqgan")
    return [str(script)] if script.exists() else [sys.executable, "-c", "import sys; from vqgan.cli import main; sys.exit(main())"]


def _env() -> dict[str, str]:
    # Same thread count in every process (sums are then reduced in the same order), and quick on a busy machine.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def _scalars(event_file: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util.tensor_util import make_ndarray

    out: dict[str, dict[int, float]] = {}
    for ev in EventFileLoader(str(event_file)).Load():
        for v in ev.summary.value:
            if v.tag.startswith("train/"):
                val = v.simple_value if v.HasField("simple_value") else float(make_ndarray(v.tensor))
                out.setdefault(v.tag, {})[ev.step] = val
    return out


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """Run A uninterrupted and run B (same command) side by side; SIGKILL B once it has written the step-5
    checkpoint; then resume B with ``--resume last``."""
    root = tmp_path_factory.mktemp("resume")
    a_dir, b_dir = root / "a", root / "b"
    a = subprocess.Popen([*_vqgan(), *ARGS, "--run-dir", str(a_dir)], env=_env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    b = subprocess.Popen([*_vqgan(), *ARGS, "--run-dir", str(b_dir)], env=_env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = b_dir / "checkpoints" / f"step{KILL_AFTER:07d}.ckpt"
    deadline = time.monotonic() + 300
    while not marker.exists() and b.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    finished_early = b.poll() is not None
    b.send_signal(signal.SIGKILL)
    b.wait()
    after_kill = sorted(p.name for p in (b_dir / "checkpoints").iterdir())
    # Every file with a checkpoint name left by the killed process is complete and valid (checked before the resume
    # rotates them away): a kill during a write leaves at most a temporary file.
    steps_after_kill = {n: int(verify_checkpoint(b_dir / "checkpoints" / n)["global_step"]) for n in after_kill
                        if n.endswith(".ckpt")}
    # The newest good checkpoint, and its step, as the resume will find them.
    resume_from = find_resume_checkpoint(b_dir / "checkpoints")
    resumed_step = int(torch.load(resume_from, weights_only=True)["global_step"])
    _, a_err = a.communicate(timeout=600)
    assert a.returncode == 0, a_err[-3000:]
    r = subprocess.run([*_vqgan(), *ARGS, "--run-dir", str(b_dir), "--resume", "last"], env=_env(),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return dict(a=a_dir, b=b_dir, b_rc=b.returncode, finished_early=finished_early, after_kill=after_kill,
                steps_after_kill=steps_after_kill,
                resume_from=resume_from, resumed_step=resumed_step, stderr=r.stderr)


def test_sigkill_then_resume_equals_an_uninterrupted_run(killed_and_resumed):
    k = killed_and_resumed
    assert not k["finished_early"] and k["b_rc"] == -signal.SIGKILL
    s = k["resumed_step"]
    assert KILL_AFTER <= s < MAX_STEPS
    assert f"Restored all states from the checkpoint at {k['resume_from']}" in k["stderr"]
    import json

    metrics = json.loads((k["b"] / "metrics.json").read_text())
    assert metrics["steps"] == MAX_STEPS and metrics["resumed_from"] == str(k["resume_from"])

    # Per-step losses after the resume equal the uninterrupted run's (generator, VQ, discriminator, GAN weight).
    (a_events,) = sorted((k["a"] / "logs").glob("events.out.tfevents.*"))
    b_events = sorted((k["b"] / "logs").glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime_ns)
    a_s, b_s = _scalars(a_events), _scalars(b_events[-1])  # the resumed process's own event file
    tags = ["train/total", "train/rec", "train/vq", "train/d_loss", "train/g_adv", "train/d_weight"]
    resumed_steps = sorted(b_s["train/total"])
    assert len(resumed_steps) == MAX_STEPS - s  # it trained exactly the remaining steps
    worst = 0.0
    for tag in tags:
        for step in resumed_steps:
            worst = max(worst, abs(a_s[tag][step] - b_s[tag][step]))
    assert worst <= TOL, f"largest difference {worst}"

    # Final state: every tensor of the checkpoint, optimizer and scheduler included.
    ca = torch.load(k["a"] / "checkpoints" / "last.ckpt", weights_only=True)
    cb = torch.load(k["b"] / "checkpoints" / "last.ckpt", weights_only=True)
    assert ca["global_step"] == cb["global_step"] == MAX_STEPS
    assert ca["state_dict"].keys() == cb["state_dict"].keys()
    assert any("ema" in name for name in ca["state_dict"]) and any("discriminator" in n for n in ca["state_dict"])
    for name, t in ca["state_dict"].items():
        assert torch.allclose(t.float(), cb["state_dict"][name].float(), atol=TOL, rtol=0), name
    states = zip(ca["optimizer_states"][0]["state"].values(), cb["optimizer_states"][0]["state"].values(), strict=True)
    for sa, sb in states:
        for key in sa:
            assert torch.allclose(torch.as_tensor(sa[key]).float(), torch.as_tensor(sb[key]).float(), atol=TOL), key
    assert ca["lr_schedulers"] == cb["lr_schedulers"]
    assert ca["vqgan_counters"] == cb["vqgan_counters"]
    assert {k: ca["vqgan_resume"][k] for k in ("epoch", "batches")} == {k: cb["vqgan_resume"][k] for k in ("epoch", "batches")}


def test_nothing_saved_is_lost_and_the_last_k_are_kept(killed_and_resumed):
    k = killed_and_resumed
    assert k["steps_after_kill"] and max(k["steps_after_kill"].values()) == k["resumed_step"]
    assert all(n.endswith(".ckpt") or ".tmp" in n for n in k["after_kill"])
    last_k = [f"step{MAX_STEPS - 1:07d}.ckpt", f"step{MAX_STEPS:07d}.ckpt"]
    names = sorted(p.name for p in (k["a"] / "checkpoints").iterdir())
    assert [n for n in names if n.startswith("step")] == last_k and "last.ckpt" in names
    # The resumed run keeps the last K too. Lightning also keeps the checkpoint it was resumed from (a safety net
    # should the resumed run fail as well), and a kill between writing step N and deleting step N - K leaves
    # that older file behind: extra files, never fewer.
    names = sorted(p.name for p in (k["b"] / "checkpoints").iterdir())
    steps = {n for n in names if n.startswith("step")}
    assert set(last_k) <= steps <= {*last_k, k["resume_from"].name, *k["after_kill"]}, names
    assert "last.ckpt" in names and not any(n.startswith(".") for n in names)  # no temporaries left


def _fake_training_checkpoint(path: Path, step: int) -> Path:
    ckpt = {"state_dict": {"w": torch.randn(64, 64)}, "global_step": step, "optimizer_states": [], "loops": {}}
    return atomic_torch_save(ckpt, path)


def _flip_a_byte_inside(path: Path, record: str = "data/0") -> None:
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(record))
    data = bytearray(path.read_bytes())
    # The record's data start after its local header (30 bytes + name + extra); flip one byte well inside.
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + 100] ^= 0xFF
    path.write_bytes(bytes(data))


def test_damaged_checkpoints_give_clear_errors(tmp_path):
    good = _fake_training_checkpoint(tmp_path / "good.ckpt", 3)
    assert verify_checkpoint(good)["global_step"] == 3
    cases = {}
    (tmp_path / "zero.ckpt").write_bytes(b"")
    cases["zero.ckpt"] = "empty"
    (tmp_path / "half.ckpt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    cases["half.ckpt"] = "corrupt or truncated"
    shutil.copy(good, tmp_path / "flipped.ckpt")
    _flip_a_byte_inside(tmp_path / "flipped.ckpt")
    cases["flipped.ckpt"] = "CRC"
    (tmp_path / "noise.ckpt").write_bytes(os.urandom(2048))
    cases["noise.ckpt"] = "corrupt or truncated"
    torch.save({"w": torch.ones(2)}, tmp_path / "weights_only.ckpt")
    cases["weights_only.ckpt"] = "no training state"
    torch.save([1, 2, 3], tmp_path / "list.ckpt")
    cases["list.ckpt"] = "does not hold a dict"
    cases["missing.ckpt"] = "does not exist"
    for name, message in cases.items():
        with pytest.raises(CheckpointError, match=message) as info:
            verify_checkpoint(tmp_path / name)
        assert name in str(info.value)
    # torch.load alone would have accepted the flipped file silently: the CRC check is what catches it.
    torch.load(tmp_path / "flipped.ckpt", weights_only=True)


def test_resume_falls_back_to_the_previous_good_checkpoint(tmp_path, caplog):
    d = tmp_path / "checkpoints"
    assert find_resume_checkpoint(d) is None  # nothing to resume: a fresh start
    names = ["step0000001.ckpt", "step0000002.ckpt", "step0000003.ckpt", "last.ckpt"]
    for i, name in enumerate(names):
        _fake_training_checkpoint(d / name, i + 1)
        t = 10**18 - i * 10**9  # timestamps in the reverse order (a copy that lost them): the step decides
        os.utime(d / name, ns=(t, t))
    (d / ".last.ckpt.tmp4194999").write_bytes(b"partial")  # a writer killed mid-write (no such process)
    assert [p.name for p in checkpoint_candidates(d)] == names[::-1]
    (d / "last.ckpt").write_bytes((d / "last.ckpt").read_bytes()[:100])  # truncated
    _flip_a_byte_inside(d / "step0000003.ckpt")  # silently corrupt
    assert find_resume_checkpoint(d) == d / "step0000002.ckpt"
    assert not (d / ".last.ckpt.tmp4194999").exists()
    warnings = " ".join(r.getMessage() for r in caplog.records)
    assert "last.ckpt" in warnings and "step0000003.ckpt" in warnings
    for name in ("step0000001.ckpt", "step0000002.ckpt"):
        (d / name).write_bytes(b"")
    with pytest.raises(CheckpointError, match="no usable checkpoint") as info:
        find_resume_checkpoint(d)
    assert all(n in str(info.value) for n in ("last.ckpt", "step0000001.ckpt", "step0000003.ckpt"))


def test_atomic_write_keeps_the_previous_file_when_interrupted(tmp_path, monkeypatch):
    path = _fake_training_checkpoint(tmp_path / "last.ckpt", 1)
    before = path.read_bytes()
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: calls.append("replace") or real_replace(a, b))

    def dies_half_way(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # stands for the process dying during the write

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"global_step": 2}, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    monkeypatch.undo()
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: calls.append("replace") or real_replace(a, b))
    calls.clear()
    atomic_torch_save({"global_step": 2, "state_dict": {}, "optimizer_states": [], "loops": {}}, path)
    assert calls == ["fsync", "replace", "fsync"]  # file data, rename, then the folder entry
    assert verify_checkpoint(path)["global_step"] == 2


def test_stale_temporaries_of_dead_writers_only_are_removed(tmp_path):
    dead = tmp_path / ".step0000004.ckpt.tmp4194999"
    alive = tmp_path / f".last.ckpt.tmp{os.getpid()}"
    dead.write_bytes(b"x")
    alive.write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == [dead]
    assert alive.exists()


def test_resumable_sampler_skips_exactly_the_consumed_items():
    data = list(range(10))
    full = ResumableSampler(data, seed=3)
    full.set_epoch(2)
    order = list(full)
    assert sorted(order) == data and order != data  # a permutation that depends on (seed, epoch)
    resumed = ResumableSampler(data, seed=3)
    resumed.resume_at(2, 4)
    assert list(resumed)[:6] == order[4:]  # (the consumed ones come last, so the length stays the same)
    assert list(resumed) == order  # the skip applies once
    resumed.resume_at(2, 10)  # a resume at the end of epoch 2 starts epoch 3
    nxt = ResumableSampler(data, seed=3)
    nxt.set_epoch(3)
    assert resumed.epoch == 3 and list(resumed) == list(nxt)

    class Global(list):
        accepts_global_index = True

    g = ResumableSampler(Global(data), seed=3)
    g.set_epoch(2)
    assert [i - 20 for i in g] == order  # global indices epoch * n + i


def test_resumable_sampler_shards_over_ranks_and_resumes_each_shard():
    """Under DDP every rank takes every W-th position of the epoch's order (padded like DistributedSampler); after
    k batches of B on every rank, resuming at k * B * W consumed items continues each rank's shard exactly."""

    class OnRank(ResumableSampler):
        def __init__(self, data, rank, world):
            super().__init__(data, seed=5)
            self._rank, self._world = rank, world

        num_replicas = property(lambda self: self._world)
        rank = property(lambda self: self._rank)

    data, world, batch = list(range(10)), 3, 2
    full = [OnRank(data, r, world) for r in range(world)]
    shards = [list(s) for s in full]
    assert all(len(s) == len(sh) == 4 for s, sh in zip(full, shards, strict=True))  # ceil(10 / 3)
    assert sorted(set().union(*shards)) == data  # every item on some rank; 2 padded repeats
    order = list(ResumableSampler(data, seed=5))
    assert [shards[i % world][i // world] for i in range(10)] == order  # interleaved positions of the order
    for r in range(world):
        resumed = OnRank(data, r, world)
        resumed.resume_at(0, 1 * batch * world)  # one batch of 2 done on each of the 3 ranks
        assert list(resumed)[: 4 - batch] == shards[r][batch:]


def test_resume_from_a_damaged_run_folder_in_process(killed_and_resumed, tmp_path, capsys):
    """The uninterrupted run's folder with its newest checkpoints damaged: ``fit(resume="last")`` continues from
    the previous good one; an explicit damaged ``--resume`` file is refused by the CLI with a message."""
    from vqgan.cli import main
    from vqgan.config import load_config
    from vqgan.train import fit

    run = tmp_path / "run"
    shutil.copytree(killed_and_resumed["a"], run)
    ck = run / "checkpoints"
    (ck / "last.ckpt").write_bytes((ck / "last.ckpt").read_bytes()[:1000])
    _flip_a_byte_inside(ck / "best.ckpt")
    (ck / f"step{MAX_STEPS:07d}.ckpt").write_bytes(b"")
    cfg = load_config(run / "config.yaml")
    cfg.train.max_steps = MAX_STEPS + 1
    metrics = fit(cfg, run, resume="last")
    assert metrics["resumed_from"] == str(ck / f"step{MAX_STEPS - 1:07d}.ckpt") and metrics["steps"] == MAX_STEPS + 1

    (ck / "last.ckpt").write_bytes(b"garbage")
    rc = main([*ARGS, "--run-dir", str(run), "--resume", str(ck / "last.ckpt")])
    err = capsys.readouterr().err
    assert rc == 1 and "last.ckpt is corrupt or truncated" in err and "Traceback" not in err
