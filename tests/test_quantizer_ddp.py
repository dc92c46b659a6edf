"""Under DDP (gloo, two CPU processes) every rank must hold the same codebook after EMA updates, k-means
initialisation and dead-code restarts, although each rank sees different data; and the EMA statistics must equal
those of one process that sees both ranks' data."""

from __future__ import annotations

import datetime
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vqgan.quantizers import ResidualQuantizer, VectorQuantizer

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data(rank: int, step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(2, 4, 4, 4, generator=g) + 3.0 * rank  # the ranks see different distributions


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        torch.manual_seed(rank)  # different local random streams: synchronisation must not rely on equal seeds
        full = VectorQuantizer(4, 16, ema=True, kmeans_init=True, dead_code_threshold=1.5, usage_decay=0.5).train()
        rvq = ResidualQuantizer(
            [VectorQuantizer(4, 8, ema=True, kmeans_init=True, dead_code_threshold=1.0) for _ in range(2)]
        ).train()
        plain_ema = VectorQuantizer(4, 16, ema=True, kmeans_init=False).train()
        torch.manual_seed(0)
        plain_ema.embedding.weight.data.normal_()
        plain_ema.ema_embed_sum.copy_(plain_ema.embedding.weight)
        restarted = torch.zeros(())
        for step in range(4):
            z = _data(rank, step)
            out = full(z)
            restarted += out.stats["restarted"]
            rvq(z)
            plain_ema(z)
        state = {
            "full": {k: v.clone() for k, v in full.state_dict().items()},
            "rvq": {k: v.clone() for k, v in rvq.state_dict().items()},
            "plain": {k: v.clone() for k, v in plain_ema.state_dict().items()},
            "restarted": restarted,
        }
        torch.save(state, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_codebooks_stay_identical_across_ranks(tmp_path) -> None:
    ctx = mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=False)
    # Bounded: a hung collective fails the test instead of blocking the suite.
    for _ in range(120):
        if ctx.join(timeout=1):
            break
    else:
        for p in ctx.processes:
            p.kill()
        pytest.fail("DDP workers did not finish within 120 s")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD))
    for name in ("full", "rvq", "plain"):
        for key in r0[name]:
            assert torch.equal(r0[name][key], r1[name][key]), f"{name}.{key} differs between ranks"
    assert float(r0["restarted"]) > 0  # the restart path really ran (and stayed in sync)
    assert bool(r0["full"]["initialized"])

    # The plain EMA codebook equals one process seeing both ranks' batches (statistics are summed, not averaged
    # per rank).
    single = VectorQuantizer(4, 16, ema=True, kmeans_init=False).train()
    torch.manual_seed(0)
    single.embedding.weight.data.normal_()
    single.ema_embed_sum.copy_(single.embedding.weight)
    for step in range(4):
        single(torch.cat([_data(0, step), _data(1, step)]))
    for key in ("embedding.weight", "ema_cluster_size", "ema_embed_sum", "usage_ema"):
        assert torch.allclose(single.state_dict()[key], r0["plain"][key], atol=1e-5), key
