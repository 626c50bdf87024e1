"""Data sets: fetching with SHA-256 verification, idx parsing, in-memory tensors."""
from distill.data.dataset import Dataset
from distill.data.double_mnist import load_double_mnist
from distill.data.files import FileData, load_files
from distill.data.mnist import FASHION_MNIST, MNIST, load_fashion_mnist, load_mnist
from distill.data.segmentation import load_mnist_seg
from distill.errors import DistillError

LOADERS = {"mnist": load_mnist, "fashion-mnist": load_fashion_mnist,
           "mnist-seg": load_mnist_seg,  # MNIST digits on 64x64 canvases, per-pixel masks
           "double-mnist": load_double_mnist}  # two MNIST digits side by side, 100 classes


def load(name: str, data_dir=None, log=print) -> Dataset:
    """Load a data set by name (a key of :data:`LOADERS`)."""

    if name not in LOADERS:
        raise DistillError(f"unknown data set {name!r}; choose one of {sorted(LOADERS)}")
    return LOADERS[name](data_dir=data_dir, log=log)


__all__ = ["Dataset", "MNIST", "FASHION_MNIST", "load", "load_mnist", "load_fashion_mnist", "FileData", "load_files",
           "load_mnist_seg", "load_double_mnist"]
