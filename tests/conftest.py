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


@pytest.fixture
def one_thread_and_own_log_handlers():
    """Tiny models: one thread is fastest, and spin-waiting threads on a busy machine cost ten times more.
    ``vqgan.cli.main`` adds a handler on the current stderr (a capture that closes with the test): drop it after.
    Modules that train tiny models or call the CLI use it with ``pytest.mark.usefixtures``."""
    n, handlers = torch.get_num_threads(), list(logging.getLogger("vqgan").handlers)
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
    logging.getLogger("vqgan").handlers[:] = handlers
