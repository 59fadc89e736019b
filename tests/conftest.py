"""Shared test fixtures."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """The test machines are shared: one intra-op thread avoids oversubscription (restored after).

    Modules that train models use it with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
