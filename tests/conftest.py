"""Shared test fixtures."""
import os

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def figures_elsewhere(tmp_path_factory):
    """Figures of the tests (notebooks executed, the browser's screenshot, any save_figure) go to a
    temporary folder, never into the versioned figures/: `python -m adnotes figures` regenerates
    those. Set ADNOTES_FIGURES yourself to keep them (e.g. the browser test's screenshot)."""
    if os.environ.get("ADNOTES_FIGURES"):
        yield
        return
    os.environ["ADNOTES_FIGURES"] = str(tmp_path_factory.mktemp("figures"))
    yield
    os.environ.pop("ADNOTES_FIGURES", None)


@pytest.fixture
def one_thread():
    """Tiny models: one intra-op thread is faster, and 2 OpenMP threads stall badly on a busy 2-core CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
