"""Control for the Fashion-MNIST specialists: is the gain the specialists' or just more training
plus averaging? Fine-tune the cached generalist of a seed for as many epochs as a specialist gets,
on all ten classes (no dustbin, no re-sampling), and combine it with the generalist by the same
KL rule; with two full-coverage models the optimum is their arithmetic mean (``distill.specialists``
tests this closed form). Run after ``distill reproduce specialists --dataset fashion-mnist --preset
paper --seed N --cache runs/cache --out runs/spec-seedN``:

    python benchmarks/specialist_control.py --results runs/spec-seedN/results.json
"""
import argparse
import copy
import json
from dataclasses import replace

import torch

from distill import data as D
from distill.checkpoints import load_checkpoint
from distill.experiments.specialists import PRESETS
from distill.metrics import predict_logits
from distill.training import fit


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", required=True, help="results.json of a Fashion-MNIST specialists run")
    a = ap.parse_args()
    recs = json.load(open(a.results))
    gen_rec = next(r for r in recs if r["model"] == "generalist")
    combo = next(r for r in recs if r["model"] == "generalist+specialists")
    seed = gen_rec["seed"]
    data = D.load("fashion-mnist")
    g, _ = load_checkpoint(gen_rec["checkpoint"])
    p = PRESETS[("fashion-mnist", "paper")]
    ft = fit(copy.deepcopy(g).train(), data, replace(p.specialist, seed=seed, loss="hard"), progress=False,
             log=lambda *x: None).model.eval()
    p_g = torch.softmax(predict_logits(g, data.x_test), 1)
    p_f = torch.softmax(predict_logits(ft, data.x_test), 1)
    q = (p_g + p_f) / 2  # the KL combination's optimum for two full-coverage models
    err = lambda pr: int((pr.argmax(1) != data.y_test).sum())  # noqa: E731
    ge, fe, ce = err(p_g), err(p_f), err(q)
    print(json.dumps(dict(seed=seed, generalist=ge, finetuned=fe, generalist_plus_finetuned=ce,
                          control_gain=(ge - ce) / ge, specialists=combo["test_errors"],
                          specialist_gain=combo["relative_error_reduction"])))


if __name__ == "__main__":
    main()
