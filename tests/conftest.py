import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded generator per test: tests never touch numpy's global RNG."""
    return np.random.default_rng(1234)
