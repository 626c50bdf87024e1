"""The specialists experiment's presets: plain data, one :class:`Preset` per (data set, name).

How the values were chosen, and what each preset costs, is in docs/results.md ("Specialists
presets: how they were chosen")."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from distill.methods import specialists as S
from distill.train.config import TrainConfig
DATASETS = ("fashion-mnist", "mnist", "synthetic", "double-mnist")
VARIANTS = S.VARIANTS
#: the keys a grid candidate may set (``specialist_epochs`` is ``Preset.specialist.epochs``)
GRID_KEYS = ("n_clusters", "overlap_ratio", "specialist_epochs", "cluster_temperature")


@dataclass(frozen=True)
class Preset:
    hidden: tuple = (512, 512)
    dropout_input: float = 0.1
    dropout_hidden: float = 0.3
    max_norm: float | None = None
    generalist: TrainConfig = TrainConfig(epochs=30, lr=0.05, momentum=0.9, schedule="cosine")
    specialist: TrainConfig = TrainConfig(epochs=10, lr=0.02, momentum=0.9, schedule="cosine")
    distill_back: TrainConfig = TrainConfig(epochs=10, lr=0.02, momentum=0.9, schedule="cosine")
    soft_temperature: float = 1.0  # soft variant: T of the loss on the (probability) soft targets
    soft_hard_weight: float = 1.0  # soft variant: weight of the hard-label term (soft term has weight 1)
    distill_back_hard_weight: float = 0.1
    n_clusters: int = 4
    overlap_ratio: float | None = None
    min_size: int = 2
    cluster_size: int = 20000  # training inputs whose predictions are clustered (labels unused)
    # the clustered probabilities are softmax(z / cluster_temperature): on its own training inputs a
    # well-fitted generalist is nearly one-hot, and softening exposes which classes it confuses
    cluster_temperature: float = 1.0
    top_n: int = 1
    tol: float = 1e-6
    train_size: int | None = None
    test_size: int | None = None
    synthetic: dict = field(default_factory=dict)
    double_mnist: dict = field(default_factory=dict)  # build arguments of double-mnist (pairs per class, seed)
    # held-out selection: training examples held out (None: no selection) and the candidate
    # settings, dicts over GRID_KEYS (unset keys: the preset's own values above)
    holdout: int | None = None
    grid: tuple = ()
    select_control: bool = True  # train the control on the tune split too (the held-out table shows it)
    seeds: tuple = (0,)


_IMG_QUICK = Preset(hidden=(256, 256), generalist=TrainConfig(epochs=8, lr=0.05),
                    specialist=TrainConfig(epochs=8, lr=0.05), distill_back=TrainConfig(epochs=3, lr=0.02),
                    train_size=10000, cluster_size=10000)
_SYN = dict(num_classes=100, group_size=5)
# specialists restart from the generalist's weights at the generalist's initial learning rate
_IMG_SPEC = TrainConfig(epochs=6, lr=0.05, momentum=0.9, schedule="cosine")
_IMG_BACK = TrainConfig(epochs=5, lr=0.02, momentum=0.9, schedule="cosine")
# the preset's own setting is the grid's first candidate (and what --no-select runs)
_FASHION_GRID = (dict(), dict(n_clusters=3), dict(n_clusters=4, overlap_ratio=1.5), dict(specialist_epochs=15))
_FASHION_30 = Preset(specialist=replace(_IMG_SPEC, epochs=30), distill_back=_IMG_BACK, n_clusters=2,
                     cluster_temperature=3.0, holdout=10000, grid=_FASHION_GRID)
# double-MNIST: 100 classes of two MNIST digits side by side (distill.data.double_mnist)
_DM_QUICK = Preset(hidden=(256, 256), generalist=TrainConfig(epochs=10, lr=0.05, momentum=0.9, schedule="cosine"),
                   specialist=replace(_IMG_SPEC, epochs=6), distill_back=replace(_IMG_BACK, epochs=3),
                   n_clusters=10, cluster_temperature=3.0, cluster_size=10000, train_size=20000,
                   holdout=5000, grid=(dict(), dict(n_clusters=20), dict(cluster_temperature=1.0),
                                       dict(overlap_ratio=1.1), dict(specialist_epochs=12)))
_DM_PAPER = Preset(hidden=(512, 512), generalist=TrainConfig(epochs=30, lr=0.05, momentum=0.9, schedule="cosine"),
                   specialist=replace(_IMG_SPEC, epochs=10), distill_back=_IMG_BACK,
                   n_clusters=10, cluster_temperature=3.0, cluster_size=20000,
                   holdout=10000, grid=(dict(), dict(n_clusters=20), dict(cluster_temperature=1.0),
                                        dict(overlap_ratio=1.1), dict(specialist_epochs=20)),
                   seeds=(0, 1, 2))

PRESETS = {
    ("fashion-mnist", "paper"): replace(_FASHION_30, generalist=replace(_FASHION_30.generalist, epochs=60)),
    # the same with a 30-epoch generalist
    ("fashion-mnist", "paper-30"): _FASHION_30,
    ("fashion-mnist", "quick"): replace(_IMG_QUICK, n_clusters=5, holdout=2000,
                                        grid=(dict(), dict(n_clusters=2, cluster_temperature=3.0),
                                              dict(specialist_epochs=4))),
    ("mnist", "paper"): Preset(generalist=TrainConfig(epochs=20, lr=0.05, momentum=0.9, schedule="cosine"),
                               specialist=_IMG_SPEC, distill_back=_IMG_BACK, n_clusters=4, cluster_temperature=3.0),
    ("mnist", "quick"): replace(_IMG_QUICK, n_clusters=4, cluster_temperature=3.0),
    ("synthetic", "paper"): Preset(hidden=(64, 64), dropout_input=0.0, dropout_hidden=0.0,
                                   generalist=TrainConfig(epochs=40, lr=0.05),
                                   specialist=TrainConfig(epochs=20, lr=0.05),
                                   distill_back=TrainConfig(epochs=20, lr=0.02),
                                   n_clusters=20, overlap_ratio=1.1, synthetic=dict(_SYN, train_per_class=300)),
    ("synthetic", "quick"): Preset(hidden=(64, 64), dropout_input=0.0, dropout_hidden=0.0,
                                   generalist=TrainConfig(epochs=15, lr=0.05),
                                   specialist=TrainConfig(epochs=8, lr=0.05),
                                   distill_back=TrainConfig(epochs=5, lr=0.02),
                                   n_clusters=20, overlap_ratio=1.1, synthetic=dict(_SYN, train_per_class=150)),
    # tiny: the same code path in seconds, for tests (held-out selection over 3 candidates included)
    ("synthetic", "tiny"): Preset(hidden=(16,), dropout_input=0.0, dropout_hidden=0.0,
                                  generalist=TrainConfig(epochs=3, lr=0.05), specialist=TrainConfig(epochs=2, lr=0.05),
                                  distill_back=TrainConfig(epochs=1, lr=0.02), n_clusters=4, overlap_ratio=1.2,
                                  cluster_size=2000,
                                  synthetic=dict(num_classes=12, group_size=3, dim=8, train_per_class=40,
                                                 test_per_class=20),
                                  holdout=96, grid=(dict(), dict(n_clusters=3, overlap_ratio=None),
                                                    dict(specialist_epochs=1))),
    ("double-mnist", "quick"): _DM_QUICK,
    ("double-mnist", "paper"): _DM_PAPER,
    # tiny: 600 training and 200 test pairs, for tests (on a fake MNIST there) and smoke runs
    ("double-mnist", "tiny"): Preset(hidden=(16,), dropout_input=0.0, dropout_hidden=0.0,
                                     generalist=TrainConfig(epochs=2, lr=0.05), specialist=TrainConfig(epochs=1, lr=0.05),
                                     distill_back=TrainConfig(epochs=1, lr=0.02), n_clusters=5,
                                     cluster_temperature=3.0, cluster_size=1000,
                                     double_mnist=dict(train_per_class=6, test_per_class=2),
                                     holdout=100, grid=(dict(), dict(n_clusters=8)), seeds=(0,)),
}
