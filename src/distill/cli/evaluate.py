"""``distill evaluate``: a checkpoint's test errors, accuracy, NLL and calibration (mIoU and pixel
accuracy for label masks), on the data given or, by default, the data its sidecar records."""
from __future__ import annotations

import json

import torch

from distill.checkpoints import load_checkpoint, load_tensors
from distill.cli import lm
from distill.cli.common import check_fits, dense_line, is_dense, load_any, log, run_on
from distill.data.files import first_inputs
from distill.errors import DistillError
from distill.metrics import classification_metrics, expected_calibration_error, predict_logits
from distill.metrics import evaluate as evaluate_model
from distill.models.classifiers import count_params


def evaluate(args) -> None:
    if load_tensors(args.checkpoint)[1].get("task") == "lm":
        return lm.evaluate(args)
    lm_only = [f for f in ("tokenizer", "block_size", "teacher") if getattr(args, f, None) is not None]
    if lm_only:
        raise DistillError(f"--{lm_only[0].replace('_', '-')} is for language-model checkpoints")
    model, side = load_checkpoint(args.checkpoint, trust_factory=args.trust_factory)
    data = load_any(args, recorded=side)
    check_fits(args.checkpoint, side, data)
    if data.test is None:
        raise DistillError(f"{data.name} has no test split to evaluate on (x_test/y_test, a test/ folder, or "
                           "test.csv)")
    run_on(args.checkpoint, lambda x: predict_logits(model, x), first_inputs(data.test), data)
    if is_dense(data):
        return _evaluate_dense(args, model, side, data)
    labels: list = []
    logits = predict_logits(model, data.test, labels=labels)
    y = torch.cat(labels)
    m = classification_metrics(logits, y)
    recorded = side.get("data_fingerprint")
    matches = None if recorded is None else recorded == data.train.fingerprint
    if matches is False and side.get("dataset") == data.name:
        log(f"[note] {args.checkpoint} was trained on other content of {data.name} (another subset or version: "
            f"training data {recorded}, here {data.train.fingerprint})")
    out = dict(checkpoint=str(args.checkpoint), dataset=data.name, test_errors=m["errors"], test_n=m["n"],
               test_accuracy=m["accuracy"], test_nll=m["nll"],
               test_ece=expected_calibration_error(logits, y), params=count_params(model),
               data_fingerprint_matches=matches)
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{args.checkpoint}: {m['errors']} test errors / {m['n']} ({100 * m['accuracy']:.2f}%), "
              f"nll {m['nll']:.4f}, {out['params']:,} params")


def _evaluate_dense(args, model, side, data) -> None:
    m = evaluate_model(model, data.test)
    recorded = side.get("data_fingerprint")
    out = dict(checkpoint=str(args.checkpoint), dataset=data.name, test_miou=m["miou"], test_miou_fg=m["miou_fg"],
               test_pixel_accuracy=m["pixel_accuracy"], test_per_class_iou=m["per_class_iou"],
               test_errors=m["errors"], test_n=m["n"], test_nll=m["nll"], params=count_params(model),
               data_fingerprint_matches=None if recorded is None else recorded == data.train.fingerprint)
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{args.checkpoint}: test {dense_line(m)}, {out['params']:,} params")
