"""``fit``: one training loop for teachers, hard-label students and distilled students, for any
``nn.Module`` and data source. It names its phases and reads top to bottom; each phase lives in
its own module:

    plan       every check and coercion, the run key        distill.train.setup
    run folder lock; skip a finished run or resume one     distill.train.rundir, distill.train.loop.restore
    loop       device, DDP, teacher, progress bar, autocast  distill.train.loop.Loop
    per epoch  train (batches -> augment -> teacher targets -> objective -> step), guard (divergence),
               evaluate val/test, save the state
    result     the kept weights, the final metrics, the model saved with its factory

Every epoch's whole state (weights, optimiser, RNGs, history, best weights) is saved in the run
folder, so an interrupted run resumes and ends exactly where an uninterrupted one would. When a
change alters what a finished run holds, bump :data:`distill.train.setup.RUN_KEY_VERSION`.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from distill import distributed
from distill.metrics import evaluate, lm_evaluate
from distill.train.config import TrainConfig
from distill.train.logs import check_callbacks
from distill.train.loop import Loop, restore
from distill.train.rundir import RunDir
from distill.train.setup import make_plan


@dataclass
class FitResult:
    """What :func:`fit` returns: the trained model (on the device it came in on, eval mode), the
    per-epoch history, the final ``val`` and ``test`` metrics (None without those sets), the
    epoch whose weights were kept, and where the run folder is. ``note``: with ``select="best"``,
    what :func:`collapse_note` says when the kept epoch was followed by a collapse (also logged)."""

    model: nn.Module
    history: list = field(default_factory=list)
    val: dict | None = None
    test: dict | None = None
    epoch: int = 0
    wall_seconds: float = 0.0
    run_dir: Path | None = None
    resumed_from: int = 0
    skipped: bool = False
    sidecar: dict | None = None
    note: str | None = None


def fit(model: nn.Module, train, config: TrainConfig | None = None, *, teacher=None, val=None, test=None,
        run_dir: str | Path | None = None, device=None, factory=None, meta: dict | None = None,
        progress: bool = True, log=print, wait: bool = False, data_id: str | None = None,
        callbacks=None) -> FitResult:
    """Train ``model`` (any ``nn.Module`` returning class logits) on ``train``.

    ``train``, ``val``, ``test``: anything :func:`distill.data.sources.as_source` accepts (``(x, y)``
    tensors or NumPy arrays, a Dataset, an IterableDataset, a DataLoader, a distill Dataset, which
    also brings its test split). ``teacher``: anything :class:`distill.Teacher` accepts; its
    outputs are computed once when they can be, and on every (jittered) batch otherwise.
    ``config.objective`` decides the loss (hard labels without a teacher, Hinton's with one).

    ``val`` is evaluated every epoch (and picks the weights with ``config.select="best"``); ``test``
    is reported every epoch and never chooses anything. With ``run_dir`` (which may contain
    ``{key}``), the folder is locked (``wait`` for another process instead of failing), every
    epoch's state is saved, a second call with the same arguments resumes an interrupted run or
    returns the finished one at once, and the model is saved at the end with its ``factory``
    (``"pkg.module:callable"`` or ``(that, kwargs)``, default: the model's ``distill_factory``).
    A diverging loss stops the run with :class:`TrainingDiverged`, keeping the last good state.

    Under ``torchrun`` (see :mod:`distill.distributed`) each process trains on its slice of every
    global batch of ``config.batch_size`` and one step equals the single-process step (without
    jitter or augment, which are drawn over the whole batch, it reads only that slice:
    :meth:`distill.data.sources.Source.parts`); process 0 alone evaluates, logs and writes ``run_dir``. ``device`` (default ``$DISTILL_DEVICE``, else the
    CPU) is where the steps run; the data stay on the host and each batch is copied over.

    ``meta``: recorded in the finished model's sidecar; its ``config_toml`` (the CLI's resolved
    config file) is written to the run folder as ``config.toml`` instead.

    With ``run_dir``, ``metrics.csv`` there gets a row per epoch and per ``config.log_every``
    steps (and TensorBoard events with ``config.tensorboard``); ``callbacks``: objects with an
    ``on_epoch_end(record)`` method, told every epoch's record on process 0 (see
    :mod:`distill.train.logs`).
    """
    t_start = time.perf_counter()
    callbacks = check_callbacks(callbacks)
    if config is not None and getattr(config, "tensorboard", False) and run_dir is None:
        raise ValueError("tensorboard=True writes its event files into the run folder: pass run_dir")
    # plan: every check and coercion, before anything trains; the run key
    plan = make_plan(model, train, config, teacher=teacher, val=val, test=test, run_dir=run_dir, device=device,
                     factory=factory, data_id=data_id)
    run = RunDir(run_dir, plan.key, wait=wait, log=log) if run_dir is not None and plan.rank == 0 else None
    # (feature distillation's hooks are on the student and the teacher from here until fit returns or fails)
    taps = plan.features if plan.features is not None else contextlib.nullcontext()
    with run if run is not None else contextlib.nullcontext(), taps:
        # run folder: a finished run is returned at once, an unfinished one resumes
        state = restore(plan, run, log)
        if state.finished is not None:
            return _skipped(plan, run, state.finished)
        if run is not None and (meta or {}).get("config_toml"):  # the command line's resolved config file
            run.write_config(meta["config_toml"])
        # loop: device, DDP, teacher outputs, progress bar, autocast
        loop = Loop(plan, state, run, progress=progress, log=log, name=(meta or {}).get("name", "train"),
                    callbacks=callbacks)
        for epoch in range(state.start_epoch, plan.config.epochs):
            t0 = time.perf_counter()
            loss, lr, seconds = loop.train_epoch(epoch)        # train
            loop.guard(epoch, loss, lr)                        # stop a diverged run, warn a stuck one
            loop.end_epoch(epoch, loss, lr, seconds, t0)       # evaluate val/test, keep the best, save
        # result: the kept weights, the final metrics, the model saved with its factory
        kept_epoch, note = loop.finish()
        result = _result(plan, state, run, kept_epoch, note, t_start, meta)
    distributed.barrier()  # no process returns before process 0 has written the model
    return result


def _skipped(plan, run, finished: dict) -> FitResult:
    """The finished run in ``run``: its recorded metrics (the test set re-evaluated when it is
    another one than the run's)."""
    plan.model.eval()
    test_metrics = finished.get("test")
    if plan.test is not None and finished.get("test_fingerprint") != plan.test.fingerprint:
        test_metrics = evaluate(plan.model, plan.test)
    return FitResult(plan.model, finished.get("history", []), finished.get("val"), test_metrics,
                     finished.get("epoch", plan.config.epochs), finished.get("wall_seconds", 0.0),
                     run.path if run else None, skipped=True, sidecar=finished)


def _result(plan, state, run, kept_epoch: int, note, t_start: float, meta) -> FitResult:
    """The final metrics; with a run folder, the model saved with its sidecar and factory."""
    p, history = plan, state.history
    val_metrics = evaluate(p.model, p.val) if p.val is not None else None
    if p.test is not None and p.tokens and p.teacher is not None and p.teacher.module is not None:
        # a language model's test metrics include how closely it follows its teacher
        test_metrics = lm_evaluate(p.model, p.test, teacher=p.teacher.forward)
    else:
        test_metrics = evaluate(p.model, p.test) if p.test is not None else None
    wall = time.perf_counter() - t_start + sum(h.get("seconds", 0.0) for h in history[:state.start_epoch])
    result = FitResult(p.model, history, val_metrics, test_metrics, kept_epoch, wall,
                       run.path if run is not None else None, resumed_from=state.start_epoch, note=note)
    if run is not None:
        sidecar = dict({k: v for k, v in (meta or {}).items() if k != "config_toml"}, config=p.config.to_dict(), seed=p.config.seed, init_weights=state.init,
                       num_classes=p.num_classes, input_shape=p.input_shape, data_fingerprint=p.source.fingerprint,
                       test_fingerprint=p.test.fingerprint if p.test else None,
                       teacher=p.teacher.id if p.teacher else None, val=val_metrics, test=test_metrics,
                       epoch=kept_epoch, history=history, wall_seconds=wall)
        if p.tokens:
            sidecar.update(task="lm", tokenizer=getattr(p.source, "tokenizer_digest", None),
                           block_size=getattr(p.source, "block_size", None), vocab_size=p.num_classes)
        run.save_final(p.model, sidecar, factory=p.factory and (p.factory["target"], p.factory["kwargs"]))
        result.sidecar = sidecar
    return result

