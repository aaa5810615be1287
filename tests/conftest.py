"""Fixtures shared by the test modules (plain helper functions are in helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from comostream.models.acoustic import AcousticModel
from comostream.models.vocoder import Vocoder

from helpers import tiny_models


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch intra-op thread for a test module (tiny ops on shared cores run faster on one);
    the previous setting is restored afterwards. Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@pytest.fixture(scope="module")
def models() -> tuple[AcousticModel, Vocoder]:
    """:func:`helpers.tiny_models` (default lookahead and singers), one pair per test module."""
    return tiny_models()
