"""Paper section 5: a generalist plus specialists on confusable subsets, combined by KL minimisation.

Pipeline: train the generalist; cluster the covariance of its predictions on the training inputs
(no labels used) into confusable subsets; train one specialist per subset (initialised from the
generalist, half its data from the subset, dustbin for the rest, prior correction) in two variants --
``hard`` (hard targets, |S|+1 softmax, paper section 5) and ``soft`` (full softmax trained on hard
targets plus the generalist's soft targets for the non-special classes, paper section 6); combine
on the test set; report the paper's Tables 3/4 (accuracy, relative improvement, accuracy by number
of covering specialists).
``--distill-back`` distils the combined ``q`` into one net of the generalist's size.

**Settings chosen on held-out data.** A preset with ``holdout`` and a ``grid`` of
candidate settings (number of clusters, overlap, specialist epochs, clustering temperature)
first holds ``holdout`` examples out of the *training* set (:func:`distill.methods.tuning.holdout_split`,
split seed 0) and, on the rest, trains a generalist (seed 0) and for every candidate the
specialists (and the control); the candidate whose generalist + specialists make the fewest
errors on the held-out examples is chosen (the first in grid order on a tie). Those runs never
see the test set. The chosen setting is then run on the full training set for every seed
(``--seeds``; the choice is made once, on seed 0's split, and applied to all seeds), and the
test set gives each reported row. Explicit ``--n-specialists`` / ``--overlap-ratio`` /
``--specialist-epochs`` / ``--cluster-temperature`` fix that dimension of the grid (a grid of
one candidate needs no choice); ``--no-select`` runs the preset's own fixed setting.

The parts: :mod:`.presets` (the presets, plain data), :mod:`.pipeline` (the stages and the
selection; :func:`run` is the experiment), :mod:`.tables` (results.md's tables and the plot).
This module holds the command-line flags (:func:`add_arguments`, :func:`main`).
"""
from __future__ import annotations

from distill.checks import add_number_flag
from distill.experiments.specialists.pipeline import (candidates, cluster_logits, find_subsets, from_generalist,
                                                      load_data, run, run_seed, select_setting, setting_of,
                                                      train_control, train_generalist, train_specialists,
                                                      with_setting)
from distill.experiments.specialists.presets import DATASETS, GRID_KEYS, PRESETS, VARIANTS, Preset
from distill.experiments.specialists.tables import (GOAL_BEYOND_CONTROL, PAPER, coverage_over_seeds, coverage_table,
                                                    describe_setting, plot_gain, seed_summary, selection_table,
                                                    summarize, summary_table)

__all__ = [
    "DATASETS", "GRID_KEYS", "PRESETS", "VARIANTS", "Preset",
    "run", "run_seed", "select_setting", "candidates", "setting_of", "with_setting", "load_data",
    "train_generalist", "train_specialists", "train_control", "cluster_logits", "find_subsets", "from_generalist",
    "PAPER", "GOAL_BEYOND_CONTROL", "summarize", "summary_table", "seed_summary", "coverage_over_seeds",
    "coverage_table", "selection_table", "describe_setting", "plot_gain",
    "add_arguments", "main",
]


def add_arguments(p) -> None:
    p.add_argument("--dataset", choices=DATASETS, default="fashion-mnist",
                   help="double-mnist: two MNIST digits side by side, 100 classes (distill.data.double_mnist)")
    p.add_argument("--preset", choices=sorted({k[1] for k in PRESETS}), default="quick")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                   help="hard: |S|+1 softmax on hard targets (paper 5); soft: full softmax + generalist soft targets (6)")
    add_number_flag(p, "--n-specialists", help="number of K-means clusters (default: the preset's, or chosen on "
                                               "held-out data); fixes this setting for the selection",
                    integer=True, minimum=1)
    add_number_flag(p, "--overlap-ratio",
                    help="also put a class in its 2nd-nearest cluster when d2 <= ratio*d1 (0 = no overlap); "
                         "fixes this setting for the selection", minimum=0)
    add_number_flag(p, "--specialist-epochs", help="epochs of every specialist (and of the control); fixes this "
                                                   "setting for the selection", integer=True, minimum=1)
    add_number_flag(p, "--cluster-temperature",
                    help="T of the softened predictions that are clustered; fixes this setting for the selection",
                    positive=True)
    add_number_flag(p, "--top-n", help="activate specialists meeting the generalist's top-n classes (default 1)",
                    integer=True, minimum=1)
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--select", dest="select", action="store_const", const=True, default=None,
                     help="choose the settings on held-out TRAINING examples (the preset's --holdout; split seed 0, "
                          "seed 0; the candidate with the fewest held-out errors of generalist + specialists, the "
                          "first on a tie), then run that setting for every seed. Default: on when the preset has "
                          "a grid and the flags above leave more than one candidate")
    sel.add_argument("--no-select", dest="select", action="store_const", const=False,
                     help="run the preset's own setting (with the flags above), no held-out selection")
    add_number_flag(p, "--holdout", help="training examples held out for the selection (default: the preset's)",
                    integer=True, minimum=1)
    p.add_argument("--distill-back", action="store_true",
                   help="distil the combined q into one net of the generalist's size")
    p.add_argument("--distill-back-variant", choices=VARIANTS, default="hard")
    p.add_argument("--no-control", action="store_true",
                   help="skip the control: the generalist trained as long as a specialist, averaged with itself")
    seeds = p.add_mutually_exclusive_group()
    # add_number_flag records each flag in its container's ``numbers``, which check_number_flags reads
    # from the parser's defaults: the group must share its parser's record, not start one of its own
    seeds.numbers = p.__dict__.setdefault("numbers", {})
    add_number_flag(seeds, "--seeds", nargs="+", integer=True, minimum=0,
                    help="seeds of the full-training-set runs (default: the preset's, e.g. 0 1 2 for double-mnist "
                         "paper); with several, results.md adds mean ± std and Table 4 summed over the seeds")
    add_number_flag(seeds, "--seed", help="one seed (= --seeds N)", integer=True, minimum=0)
    p.add_argument("--out", default="runs/specialists", help="folder for results.json / results.md / plot")
    p.add_argument("--cache", help="folder of trained stages, shared between experiments (default OUT/stages)")
    p.add_argument("--data-dir")
    p.add_argument("--no-progress", action="store_true")


def main(args) -> list[dict]:
    records = run(dataset=args.dataset, preset=args.preset, out=args.out, cache=args.cache, data_dir=args.data_dir,
                  variants=tuple(args.variants), distill_back=args.distill_back,
                  distill_back_variant=args.distill_back_variant, n_clusters=args.n_specialists,
                  overlap_ratio=args.overlap_ratio, top_n=args.top_n, seed=args.seed, seeds=args.seeds,
                  select=args.select, specialist_epochs=args.specialist_epochs,
                  cluster_temperature=args.cluster_temperature, holdout=args.holdout,
                  control=not args.no_control, progress=not args.no_progress)
    print(f"wrote {args.out}/results.json, {args.out}/results.md and {args.out}/gain_vs_covering.png")
    return records
