import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def mnist():
    from distill.data import load_mnist

    return load_mnist(log=lambda *a: None)


@pytest.fixture(scope="session")
def small(mnist):
    """1,000 training and 500 test images of real MNIST, stratified, fixed seed."""
    return mnist.subset(train=1000, test=500, seed=0)
