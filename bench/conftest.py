import numpy as np
import pytest

import coreformer


@pytest.fixture(scope="session", autouse=True)
def threads():
    coreformer.set_num_threads(2)
    try:
        import torch
        torch.set_num_threads(2)
    except ImportError:
        pass


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def randn(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)
