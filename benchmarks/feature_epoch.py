"""The cost of feature distillation: a ``fit`` epoch of logit KD plus one feature pair against the
same epoch of logit KD alone, the same student, teacher and batches:

    python benchmarks/feature_epoch.py [--rounds 5] [--train-size 10000] [--batch-size 128]

The teacher is a ResNet of width 16 (``distill.models.ResNet``, the ``teacher-gap`` experiment's
member), the student a ResNet of width 4, on MNIST's first ``--train-size`` training images with
±2-pixel shifts (``Augment(shift=2)``), so the teacher runs on every batch in both variants: the
feature pair adds the hooks, the projector and its loss, which is what the goal (≤ 1.15×) is about.
Variants: ``logits`` (``Distillation(T=4, hard_weight=0.1)``), ``+hint`` (``layer3`` on both sides,
a learned 1x1 convolution 16 -> 64 channels), ``+attention`` (``layer3``, no projector),
``+relational`` (the pooled embeddings); and, for scale, ``stored`` (the same logit KD without
augmentation, the teacher's logits computed once before the epochs and not timed). Every round
runs every variant once (the order rotating each round); the time is the epoch's training time
``fit`` records (``history[0]["train_seconds"]``, no evaluation). Prints the medians and each
feature variant's ratio to ``logits``.
"""
from __future__ import annotations

import argparse
import statistics

import torch

from distill.data import load_mnist
from distill.data.augment import Augment
from distill.losses.objectives import Distillation, FeatureDistillation
from distill.models.classifiers import ResNet
from distill.teachers.teacher import Teacher
from distill.train.config import TrainConfig
from distill.train.fit import fit

PAIRS = {"+hint": ("layer3", "layer3", "hint", 1.0), "+attention": ("layer3", "layer3", "attention", 100.0),
         "+relational": ("pool", "pool", "relational", 1.0)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--train-size", type=int, default=10000)
    ap.add_argument("--batch-size", type=int, default=128)
    a = ap.parse_args()
    d = load_mnist(log=lambda *_: None)
    x, y = d.x_train[:a.train_size].reshape(-1, 1, 28, 28), d.y_train[:a.train_size]  # images: shifts need them
    torch.manual_seed(100)
    teacher = ResNet(1, 10, 16, 1, image_shape=(28, 28)).to(memory_format=torch.channels_last).eval()
    kd = Distillation(4.0, hard_weight=0.1)
    base = TrainConfig(epochs=1, batch_size=a.batch_size, lr=0.05, augment=Augment(shift=2), divergence=None)
    variants = {"logits": (base, kd), **{k: (base, FeatureDistillation(kd, [p])) for k, p in PAIRS.items()},
                "stored": (TrainConfig(epochs=1, batch_size=a.batch_size, lr=0.05, divergence=None), kd)}
    names = list(variants)
    times = {k: [] for k in names}
    for r in range(a.rounds):
        for k in names[r % len(names):] + names[:r % len(names)]:
            cfg, objective = variants[k]
            torch.manual_seed(0)
            student = ResNet(1, 10, 4, 1, image_shape=(28, 28)).to(memory_format=torch.channels_last)
            res = fit(student, (x, y), TrainConfig(**{**cfg.__dict__, "objective": objective}),
                      teacher=Teacher(teacher), progress=False, log=lambda *_: None)
            times[k].append(res.history[0]["train_seconds"])
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"threads {torch.get_num_threads()}, {len(y)} images/epoch, batch {a.batch_size}, {a.rounds} rounds; "
          "teacher ResNet width 16, student ResNet width 4")
    for k in names:
        ratio = f"  {med[k] / med['logits']:.3f}x logits" if k != "logits" else ""
        print(f"{k:12s} median {med[k]:.2f} s/epoch (min {min(times[k]):.2f}, max {max(times[k]):.2f}){ratio}")
    print("goal: a feature-distillation epoch <= 1.15x the logit-only epoch")


if __name__ == "__main__":
    main()
