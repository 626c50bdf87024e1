"""``distill evaluate``: a checkpoint's test errors, accuracy, NLL and calibration (mIoU and pixel
accuracy for label masks), on the data given or, by default, the data its sidecar records; with
``--teacher`` (several: their ensemble), its fidelity to that teacher
(:func:`distill.metrics.fidelity`: top-1 and top-5 agreement, KL(teacher ‖ student) at T = 1) and
the teacher's calibration beside its own."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from distill.checkpoints import load_checkpoint, load_tensors
from distill.cli import lm
from distill.cli.common import check_fits, dense_line, is_dense, load_any, log, run_on
from distill.data.files import first_inputs
from distill.errors import DistillError
from distill.metrics import classification_metrics, expected_calibration_error, fidelity, predict_logits
from distill.metrics import evaluate as evaluate_model
from distill.models.classifiers import count_params
from distill.teachers.teacher import Teacher


def evaluate(args) -> None:
    if Path(args.checkpoint).suffix == ".onnx":  # an export: run it in ONNX Runtime, not the PyTorch file beside it
        return evaluate_onnx(args)
    if load_tensors(args.checkpoint)[1].get("task") == "lm":
        return lm.evaluate(args)
    lm_only = [f for f in ("tokenizer", "block_size") if getattr(args, f, None) is not None]
    if lm_only:
        raise DistillError(f"--{lm_only[0].replace('_', '-')} is for language-model checkpoints")
    model, side = load_checkpoint(args.checkpoint, trust_factory=args.trust_factory)
    data = load_any(args, recorded=side)
    check_fits(args.checkpoint, side, data)
    if data.test is None:
        raise DistillError(f"{data.name} has no test split to evaluate on (x_test/y_test, a test/ folder, or "
                           "test.csv)")
    run_on(args.checkpoint, lambda x: predict_logits(model, x), first_inputs(data.test), data)
    teachers = list(getattr(args, "teacher", None) or [])
    if teachers and is_dense(data):
        raise DistillError("--teacher (agreement, KL and calibration against a teacher) is for classifiers and "
                           "language models, not label masks")
    if is_dense(data):
        return _evaluate_dense(args, model, side, data)
    teacher = _teacher(args, teachers, data) if teachers else None
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
    ece = f"ECE {out['test_ece']:.4f}"
    if teacher is not None:
        t_logits = predict_logits(teacher.module, data.test)
        if t_logits.shape != logits.shape:
            raise DistillError(f"the teacher predicts {t_logits.shape[1]} classes, {args.checkpoint} "
                               f"{logits.shape[1]}: agreement and KL need the same classes")
        f = fidelity(logits, t_logits, y)
        out.update(teacher=teachers if len(teachers) > 1 else teachers[0], test_agreement=f["agreement"],
                   test_top5_agreement=f["top5_agreement"], test_kl=f["kl"], test_teacher_ece=f["teacher_ece"])
        ece = (f"agreement with the teacher {100 * f['agreement']:.2f}% (top-5 {100 * f['top5_agreement']:.2f}%), "
               f"KL {f['kl']:.4f}, {ece} (teacher {f['teacher_ece']:.4f})")
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{args.checkpoint}: {m['errors']} test errors / {m['n']} ({100 * m['accuracy']:.2f}%), "
              f"nll {m['nll']:.4f}, {ece}, {out['params']:,} params")


def _teacher(args, teachers: list, data) -> Teacher:
    """The ``--teacher`` checkpoint(s) (several: their arithmetic-mean ensemble at T = 1), checked
    against the data and run on its first inputs before anything is measured."""
    for path in teachers:
        tside = load_tensors(path)[1]
        if tside.get("task") == "lm":
            raise DistillError(f"teacher {path} is a language model; the checkpoint evaluated is a classifier")
        check_fits(f"teacher {path}", tside, data)
    teacher = Teacher(teachers, trust_factory=args.trust_factory)
    what = f"teacher {teachers[0]}" if len(teachers) == 1 else "the teachers' ensemble"
    run_on(what, lambda x: predict_logits(teacher.module, x), first_inputs(data.test), data)
    return teacher


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


# ---------------------------------------------------------------- an ONNX export

def evaluate_onnx(args) -> None:
    """``distill evaluate FILE.onnx``: the export itself, run in ONNX Runtime, on the test split of
    the data it records (the checkpoint it was made from, when that is at hand and still has the
    same weights, else the export's own metadata), or on ``--data``/``--dataset``; the same result
    line as a checkpoint's, marked "(ONNX Runtime)"."""
    path = Path(args.checkpoint)
    for flag in ("tokenizer", "block_size", "teacher"):
        if getattr(args, flag, None) is not None:
            raise DistillError(f"--{flag.replace('_', '-')} is not for ONNX files: evaluate the checkpoint "
                               f"{path.with_suffix('')} instead")
    if not path.is_file():
        raise DistillError(f"{path} not found (`distill export CHECKPOINT` writes the ONNX file beside it)")
    try:
        import onnxruntime as ort
    except ImportError:
        raise DistillError(f"evaluating {path} needs ONNX Runtime: pip install 'distill[export]'") from None
    run = OnnxRunner(path, ort)
    if run.meta.get("task") == "lm":
        raise DistillError(f"{path} is a language model's export; evaluate its checkpoint {path.with_suffix('')}")
    side = _onnx_recorded(path, run.meta)
    data = load_any(args, recorded=side)
    check_fits(str(path), side, data)
    if data.test is None:
        raise DistillError(f"{data.name} has no test split to evaluate on (x_test/y_test, a test/ folder, or "
                           "test.csv)")
    run_on(str(path), run, first_inputs(data.test), data)
    runtime = f"ONNX Runtime {ort.__version__}"
    recorded = side.get("data_fingerprint")
    matches = None if recorded is None else recorded == data.train.fingerprint
    if is_dense(data):
        m = evaluate_model(run, data.test)
        out = dict(checkpoint=str(path), runtime=runtime, dataset=data.name, test_miou=m["miou"],
                   test_miou_fg=m["miou_fg"], test_pixel_accuracy=m["pixel_accuracy"], test_errors=m["errors"],
                   test_n=m["n"], test_nll=m["nll"], data_fingerprint_matches=matches)
        line = f"{path}: test {dense_line(m)}"
    else:
        labels: list = []
        logits = predict_logits(run, data.test, labels=labels)
        y = torch.cat(labels)
        m = classification_metrics(logits, y)
        out = dict(checkpoint=str(path), runtime=runtime, dataset=data.name, test_errors=m["errors"], test_n=m["n"],
                   test_accuracy=m["accuracy"], test_nll=m["nll"], test_ece=expected_calibration_error(logits, y),
                   data_fingerprint_matches=matches)
        line = (f"{path}: {m['errors']} test errors / {m['n']} ({100 * m['accuracy']:.2f}%), nll {m['nll']:.4f}, "
                f"ECE {out['test_ece']:.4f}")
    print(json.dumps(out) if args.json else f"{line} ({runtime})")


class OnnxRunner:
    """An ONNX file as a callable on a batch of inputs (float32) -> its first output, in ONNX
    Runtime on the CPU; ``meta``: the description :func:`distill.tools.export.export_model` wrote
    into it ({} for another file)."""

    def __init__(self, path: Path, ort):
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DistillError(f"ONNX Runtime cannot load {path} ({text})") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise DistillError(f"{path} takes {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); distill "
                               "evaluate runs classifiers' exports, which take one")
        self.name = inputs[0].name
        text = self.session.get_modelmeta().custom_metadata_map.get("distill")
        try:
            meta = json.loads(text) if text else {}
        except ValueError:
            meta = {}
        self.meta = meta if isinstance(meta, dict) else {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        try:
            out = self.session.run(None, {self.name: np.ascontiguousarray(x.detach().cpu().numpy(), np.float32)})[0]
        except Exception as e:  # onnxruntime's own exception types; run_on names a RuntimeError in one line
            raise RuntimeError(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__) from None
        return torch.from_numpy(np.asarray(out))


def _onnx_recorded(path: Path, meta: dict) -> dict:
    """What an export was trained on: the sidecar of the checkpoint it was made from when that is
    found (as recorded, or beside the file) with the same weights, else the export's metadata."""
    for stem in dict.fromkeys(p for p in (meta.get("checkpoint"), path.with_suffix("")) if p):
        if not Path(f"{stem}.safetensors").is_file():
            continue
        try:
            side = load_tensors(stem)[1]
        except DistillError:
            continue
        if meta.get("weights_sha256") and side.get("weights_sha256") == meta["weights_sha256"]:
            return side
        log(f"[note] {stem} has other weights than {path} was exported from (retrained since?); evaluating the "
            "export on the data it records")
    inputs = meta.get("inputs") or {}  # a table's columns and text codes, where a sidecar has them
    return {**meta, **{k: inputs[k] for k in ("features", "categories") if isinstance(inputs, dict) and inputs.get(k)}}
