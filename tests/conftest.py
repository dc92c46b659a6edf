"""Shared test settings: deterministic, CPU, fp32, quiet."""

import logging
import os
import warnings

import pytest
import torch

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


@pytest.fixture(autouse=True)
def _seed_and_quiet():
    torch.manual_seed(0)
    logging.getLogger("lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield



@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one intra-op thread is fastest, and spin-waiting threads on a busy machine cost ten times more.
    Module-scoped, so the module's own module-scoped fixtures (trained models) run with it too."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def one_thread_and_own_log_handlers(one_thread):
    """:func:`one_thread`, and the ``vqgan`` log handlers restored after each test: ``vqgan.cli.main`` adds a
    handler on the current stderr (a capture that closes with the test)."""
    handlers = list(logging.getLogger("vqgan").handlers)
    yield
    logging.getLogger("vqgan").handlers[:] = handlers
