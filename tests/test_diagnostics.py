"""Codebook diagnostics: the file written during fit (keys, shapes, dtypes, values), TensorBoard tags, the loader,
and the per-code statistics for gradient-learned and EMA codebooks."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from vqgan.metrics.codebook import load_diagnostics
from vqgan.quantizers import FSQ, ResidualQuantizer, VectorQuantizer
from vqgan.registry import get_preset
from vqgan.train.diagnostics import CodebookDiagnostics, find_quantizer


def test_fit_writes_diagnostics_and_tensorboard(tmp_path: Path) -> None:
    from vqgan.train.fit import fit

    cfg = get_preset("test-vq")
    cfg.loss.perceptual, cfg.loss.disc_weight = "none", 0.0
    cfg.train.max_steps, cfg.train.val_every_n_steps, cfg.train.diagnostics_every_n_steps = 4, 4, 2
    cfg.train.logger = "tensorboard"
    fit(cfg, tmp_path)

    d = load_diagnostics(tmp_path)
    k = cfg.model.quantizer.codebook_size
    assert d["step"].tolist() == [2, 4] and d["step"].dtype == np.int64
    for key in ("usage", "perplexity", "dead_codes", "restarts"):
        assert d[key].shape == (2,)
    for key in ("code_norms", "code_grad_norms", "code_counts"):
        assert d[key].shape == (2, k) and d[key].dtype == np.float32
    tokens_per_step = cfg.data.batch_size * cfg.model.latent_resolution**2
    assert d["code_counts"].sum(1).tolist() == [2 * tokens_per_step] * 2  # hits in each 2-step window
    assert np.allclose(d["usage"], (d["code_counts"] > 0).mean(1))
    assert (d["perplexity"] >= 1).all() and (d["perplexity"] <= k).all()
    assert (d["code_grad_norms"] > 0).any()  # gradients of a learned codebook were read
    assert (d["code_norms"] > 0).all()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "logs"), size_guidance={"histograms": 0}).Reload()
    tags = events.Tags()
    for tag in ("diag/usage", "diag/perplexity", "diag/dead_codes", "diag/restarts"):
        assert tag in tags["scalars"], tags["scalars"]
    assert "diag/code_norms" in tags["histograms"]


def test_load_diagnostics_missing_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="diagnostics_every_n_steps"):
        load_diagnostics(tmp_path)


def _fake_trainer(step: int) -> SimpleNamespace:
    return SimpleNamespace(global_step=step, is_global_zero=True, loggers=[])


def test_ema_codebook_reports_update_norms_restarts_and_dead_codes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(VectorQuantizer(4, 16, ema=True, kmeans_init=True, dead_code_threshold=0.5))
    vq = model[0].train()
    cb = CodebookDiagnostics(tmp_path, every_n_steps=1)
    cb.on_train_start(_fake_trainer(0), model)  # type: ignore[arg-type]
    before = vq.codebook.detach().clone()
    for _ in range(2):
        vq(torch.randn(2, 4, 4, 4))
    row = cb.record(_fake_trainer(2), model, 2)  # type: ignore[arg-type]
    # For an EMA codebook the "gradient" column is the norm of each code's change since the previous record.
    assert np.allclose(row["code_grad_norms"], (vq.codebook.detach() - before).norm(dim=1).numpy(), atol=1e-6)
    assert row["code_counts"].sum() == 2 * 32
    assert row["dead_codes"] == int(vq.dead_codes().sum())
    # Nothing hit since: the next window is empty and the restarts counter was reset.
    row2 = cb.record(_fake_trainer(3), model, 3)  # type: ignore[arg-type]
    assert row2["usage"] == 0 and row2["restarts"] == 0
    d = load_diagnostics(tmp_path)
    assert d["step"].tolist() == [2, 3]


def test_dead_codes_and_restarts_are_counted(tmp_path: Path) -> None:
    torch.manual_seed(0)
    vq = VectorQuantizer(2, 8, ema=False, kmeans_init=False, dead_code_threshold=0.5).train()
    with torch.no_grad():
        vq.embedding.weight.fill_(50.0)
    cb = CodebookDiagnostics(tmp_path, every_n_steps=1)
    cb.on_train_start(_fake_trainer(0), vq)  # type: ignore[arg-type]
    vq(torch.randn(1, 2, 4, 4))  # every code is dead at the start and restarted
    row = cb.record(_fake_trainer(1), vq, 1)  # type: ignore[arg-type]
    assert row["restarts"] == 8


def test_residual_reports_first_stage_and_huge_implicit_codebooks_skip_per_code_arrays(tmp_path: Path) -> None:
    stages = [VectorQuantizer(4, 8, ema=True, kmeans_init=False) for _ in range(2)]
    rvq = ResidualQuantizer(stages)
    assert find_quantizer(torch.nn.Sequential(rvq)) is rvq and rvq.diagnostic_target is stages[0]
    big = FSQ(6, [8, 8, 8, 8, 8, 8]).train()  # 262,144 implicit codes
    cb = CodebookDiagnostics(tmp_path, every_n_steps=1)
    cb.on_train_start(_fake_trainer(0), big)  # type: ignore[arg-type]
    hit = big(torch.randn(1, 6, 4, 4)).indices.unique().numel()
    row = cb.record(_fake_trainer(1), big, 1)  # type: ignore[arg-type]
    assert "code_norms" not in row and row["usage"] == pytest.approx(hit / 262_144)
    d = load_diagnostics(tmp_path)
    assert set(d) == {"step", "usage", "perplexity", "dead_codes", "restarts"}


def test_codebook_usage_metric_counts_first_stage_of_residual_indices() -> None:
    from vqgan.metrics import CodebookUsage

    idx = torch.tensor([[[0, 5], [1, 5]], [[1, 6], [3, 7]]])  # (B=2, N=2, stages=2)
    m = CodebookUsage(8, num_stages=2)
    m.update(idx)
    stats = m.compute()
    assert m.counts.tolist() == [1, 2, 0, 1, 0, 0, 0, 0]
    assert float(stats["usage"]) == 3 / 8 and float(stats["used"]) == 3
    single = CodebookUsage(8)
    single.update(idx[..., 1])
    assert single.counts.tolist() == torch.bincount(idx[..., 1].flatten(), minlength=8).tolist()
