"""The training runtime of :func:`distill.fit`: the batch (:class:`Batch`), the epoch's batches as
one process trains on them (:func:`epoch_batches`, the one place data parallelism slices), the
restored state (:func:`restore`), and :class:`Loop` (device, DDP or FSDP2, teacher preparation, progress bar,
autocast; per epoch: train, guard, evaluate and save; at the end: select and save the model).
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from distill import distributed
from distill.checkpoints import fill_tied, shared_names, unique_state
from distill.digest import ExampleDigest
from distill.errors import DistillError
from distill.losses.functional import valid_token_count
from distill.losses.objectives import Distillation, HardLabels
from distill.metrics import FIDELITY, evaluate, lm_evaluate, predict_logits
from distill.modelio import inputs_to, logits_of, model_forward
from distill.teachers.teacher import module_id
from distill.train.augmenter import mixup_loss
from distill.train.config import lr_at, make_optimizer
from distill.train.logs import MetricsLog, TensorBoardLog
from distill.train.onpolicy import on_policy_step, rollout, sampling_generator
from distill.train.divergence import TrainingDiverged, chance_loss, collapse_note, divergence, label_entropy, stuck


@dataclass
class Batch:
    """One step's examples: ``inputs`` (a tensor, or a dict of named tensors), ``labels`` and
    ``index`` (example indices) or None, ``size`` (examples in the global batch, of which this
    process may hold a slice), ``mask`` (bool, the positions that count; None = all), and what
    augmentation adds: ``mixed`` (mixup's partner labels and lam) and ``rows`` (stored view rows)."""

    inputs: object
    labels: torch.Tensor | None
    index: torch.Tensor | None
    size: int
    mask: torch.Tensor | None = None
    mixed: tuple | None = None
    rows: torch.Tensor | None = None

    def __len__(self) -> int:
        x = next(iter(self.inputs.values())) if isinstance(self.inputs, Mapping) else self.inputs
        return len(x)

    def shard(self, rank: int, world_size: int) -> "Batch":
        """This process's contiguous slice (:func:`distill.distributed.shard`) of every tensor."""
        def cut(t):
            if t is None:
                return None
            if isinstance(t, Mapping):
                return {k: distributed.shard(v, rank, world_size) for k, v in t.items()}
            return distributed.shard(t, rank, world_size)
        mixed = None if self.mixed is None else (cut(self.mixed[0]), self.mixed[1])
        return Batch(cut(self.inputs), cut(self.labels), cut(self.index), self.size, cut(self.mask), mixed,
                     cut(self.rows))

    def split(self, parts: int) -> list["Batch"]:
        """This batch as ``parts`` contiguous micro-batches (gradient accumulation), as even as
        ``torch.tensor_split`` makes them; fewer when the batch has fewer examples."""
        n = len(self)
        parts = max(1, min(parts, n))
        if parts == 1:
            return [self]
        bounds = torch.tensor_split(torch.arange(n), parts)

        def cut(t, r):
            if t is None:
                return None
            if isinstance(t, Mapping):
                return {k: v[r[0]:r[-1] + 1] for k, v in t.items()}
            return t[r[0]:r[-1] + 1]
        return [Batch(cut(self.inputs, r), cut(self.labels, r), cut(self.index, r), self.size, cut(self.mask, r),
                      None if self.mixed is None else (cut(self.mixed[0], r), self.mixed[1]), cut(self.rows, r))
                for r in bounds]


def epoch_batches(source, batch_size: int, generator, augmenter, rank: int, world_size: int, seen=None):
    """The epoch's batches as this process trains on them. Without augmentation under data
    parallelism each process reads only its slice of every global batch (:meth:`Source.parts`:
    same order, so one step equals the single-process step); with augmentation (``jitter`` is
    ``Augment(shift=...)``) the whole global batch is read and augmented, so every process draws
    the same parameters, then sliced. ``seen(x, y, idx)`` is told every batch as read."""
    if world_size > 1 and augmenter is None:
        for x, y, idx, b in source.parts(batch_size, generator, rank, world_size):
            yield Batch(x, y, idx, b)
        return
    for x, y, idx in source.batches(batch_size, generator):
        if seen is not None:
            seen(x, y, idx)
        batch = Batch(x, y, idx, len(x))
        if augmenter is not None:
            batch.inputs, batch.mixed, batch.rows = augmenter(x, y, idx, generator)
        yield batch.shard(rank, world_size) if world_size > 1 else batch


@dataclass
class State:
    """Where training stands: the optimiser and the data generator, the history, the epoch to
    start from, the best weights so far (``select="best"``), the finished run's sidecar (skip), and
    the digest of the initial weights (recorded, not keyed)."""

    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    history: list = field(default_factory=list)
    start_epoch: int = 0
    best: dict | None = None
    finished: dict | None = None
    init: str | None = None


def restore(plan, run, log) -> State:
    """A fresh state, or the run folder's: its finished run (skip) or its last saved epoch (resume).
    Under DDP process 0 alone reads the folder and sends the state to the rest."""
    model, config = plan.model, plan.config
    trained = model if plan.features is None else plan.features.trained_with(model)  # + feature projectors
    state = State(make_optimizer(trained, config), torch.Generator().manual_seed(config.seed))
    state.init = module_id(model) if run is not None else None  # not in the key (see the warning below)
    error = None
    if run is not None:
        try:
            state.finished = run.finished(model)
            side = None if state.finished else run.resume()
            recorded = (state.finished or (side[1] if side else None) or {}).get("init_weights")
            if recorded not in (None, state.init):
                log(f"[warning] {run.path} holds a run that started from other initial weights than this "
                    "model's; it is used because the run key does not cover the initial weights. Seed them "
                    "with distill.seed_everything(config.seed) before building the model, or give "
                    "this run another run_dir (or another config.seed)")
            if side is not None:
                tensors, side = side
                state.best = restore_state(tensors, model, state.optimizer, state.generator)
                state.history, state.start_epoch = side["history"], side["epoch"]
                log(f"[resume] {run.path}: continuing after epoch {state.start_epoch}/{config.epochs}")
        except DistillError as e:
            error = e
    if plan.world_size > 1:
        got = distributed.from_process_0(dict(
            error=str(error) if error else None, finished=state.finished, history=state.history,
            start_epoch=state.start_epoch, model=model.state_dict(), optim=state.optimizer.state_dict(),
            gen=state.generator.get_state(), best=state.best,
            extra=[q.detach().cpu() for q in trained_besides(model, state.optimizer)]))
        error = DistillError(got["error"]) if got["error"] else None
        if plan.rank and not error:
            state.finished, state.history = got["finished"], got["history"]
            state.start_epoch, state.best = got["start_epoch"], got["best"]
            model.load_state_dict(got["model"])
            state.optimizer.load_state_dict(got["optim"])
            _load_besides(model, state.optimizer, got["extra"])
            state.generator.set_state(got["gen"])
    if error:
        raise error
    return state


def _silent(*_args) -> None:
    pass


class Loop:
    """The training runtime over one :class:`~distill.train.setup.Plan` and :class:`State`."""

    def __init__(self, plan, state: State, run, *, progress: bool = True, log=print, name: str = "train",
                 callbacks=()):
        self.plan, self.state, self.run = plan, state, run
        p, model, dev = plan, plan.model, plan.device
        self.log = log
        # device, teacher: outputs computed once where they can be, then the teacher moves to the device
        model.to(dev)
        self.teacher_home = p.teacher.device if p.teacher is not None else None
        if p.teacher is not None:
            # (feature distillation reads the teacher's features: it runs on every batch, nothing is stored)
            p.teacher.prepare(p.source, augmented=p.augmenter is not None or p.features is not None, device=dev,
                              progress=progress and p.rank == 0, log=log)
            if p.augmenter is not None and p.features is None:  # fixed views, a store folder: outputs per view
                p.augmenter.prepare(p.teacher, progress=progress and p.rank == 0, log=log)
            p.teacher.to(dev)
        if p.features is not None:
            p.features.to(dev)
        # DDP: broadcasts process 0's weights; FSDP2: trains a sharded twin (see _shard); only
        # process 0 shows progress and logs
        self.net = model
        self.fsdp = p.world_size > 1 and p.config.parallel == "fsdp"
        if self.fsdp:
            self._shard(model)
        elif p.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(model)
        if p.world_size > 1:
            progress = progress and p.rank == 0
            if p.rank:
                self.log = _silent
        self.progress = progress
        self.constrain = getattr(self.net if self.fsdp else model, "constrain", None)
        self.steps = math.ceil(p.source.n / (p.source.batch_size or p.config.batch_size)) if p.source.n else None
        self.show_bar = progress and sys.stderr.isatty()
        self.bar = tqdm(total=self.steps * p.config.epochs if self.steps else None,
                        initial=(self.steps or 0) * state.start_epoch, disable=not self.show_bar, desc=str(name),
                        unit="batch", leave=False, mininterval=1.0)
        self.autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=p.config.precision == "bf16")
        # the logs (process 0, with a run folder): metrics.csv from the saved epochs on, TensorBoard
        # purged after them; the step count goes on from the history's
        self.global_step = state.history[-1].get("step", 0) if state.history else 0
        self.metrics = MetricsLog(run.path, state.start_epoch) if run is not None else None
        self.board = (TensorBoardLog(run.path, purge_step=self.global_step)
                      if run is not None and p.config.tensorboard else None)
        self.callbacks = list(callbacks)
        self.terms = None  # {} asks the next loss for its terms (a log step); then what they were
        self.epoch_terms: list[dict] = []
        self.epoch_examples = 0
        self.teacher_held_out: dict = {}
        self.epoch_rollouts, self.epoch_generate_s = 0, 0.0  # on-policy: steps that sampled, their seconds
        # the divergence guard: the losses so far, a constant prediction's cost, the class prior's cost
        # (the entropy of the training labels, counted over the first epoch trained here)
        self.epoch_losses = [h["train_loss"] for h in state.history]
        self.chance, self.prior, self.warned = None, None, False
        self.counts = (torch.zeros(p.num_classes, device=dev) if p.config.divergence is not None
                       and isinstance(p.objective, HardLabels) else None)
        self.identity_checked = False
        model.train()
        self.net.train()

    def _shard(self, model) -> None:
        """FSDP2 (``parallel="fsdp"`` under torchrun): train :func:`distill.distributed.fsdp_twin`,
        a copy of ``model`` whose blocks and root are ``fully_shard``-ed (``model`` keeps its class
        and hooks; its parameters are emptied until :meth:`finish` gives them the trained weights).
        The optimiser is rebuilt over the sharded parameters, with the restored state (the same on
        every process) cut to each process's shards."""
        p, st = self.plan, self.state
        self.tied = shared_names(model)  # before the parameters are emptied
        saved = st.optimizer.state_dict()
        self.net = distributed.fsdp_twin(model)
        st.optimizer = make_optimizer(self.net, p.config)
        distributed.load_full_optimizer_state(st.optimizer, saved)
        # saving gathers the state, a collective: every process must know whether process 0 saves
        self.saving = distributed.from_process_0(self.run is not None)

    # ---------------------------------------------------------------- one epoch
    def train_epoch(self, epoch: int) -> tuple[float, float, float]:
        """Train one epoch; ``(mean loss, lr, seconds)``."""
        p, st = self.plan, self.state
        t0 = time.perf_counter()
        per_step = p.config.lr_per_step or p.config.warmup_steps
        lr = lr_at(p.config, epoch, step=epoch * (self.steps or 0))
        for group in st.optimizer.param_groups:
            group["lr"] = lr
        if p.world_size > 1:
            torch.manual_seed(distributed.epoch_seed(p.config.seed, p.rank, epoch))
        if p.objective.epoch_dependent:
            self.chance = None  # the loss's scale changes with the epoch: judge divergence at this one's
        # a fingerprint read from a Dataset or DataLoader holds only if the examples trained on in
        # the first epoch are those it read (random transforms in __getitem__ break that)
        check = (ExampleDigest(indexed=p.source.indexable)
                 if p.source.read_to_identify and not self.identity_checked and p.world_size == 1 else None)
        total = torch.zeros((), device=p.device)
        count = torch.zeros((), device=p.device)
        every, window, t_window = p.config.log_every, torch.zeros(3, device=p.device), t0
        self.epoch_terms, self.epoch_examples = [], 0
        self.epoch_rollouts, self.epoch_generate_s = 0, 0.0
        for i, batch in enumerate(epoch_batches(p.source, p.config.batch_size, st.generator, p.augmenter, p.rank,
                                                p.world_size, seen=check.update if check is not None else None)):
            if per_step and i:
                step_lr = lr_at(p.config, epoch + i / self.steps if self.steps else epoch,
                                step=epoch * (self.steps or 0) + i)
                for group in st.optimizer.param_groups:
                    group["lr"] = step_lr
            due = bool(every) and (self.global_step + 1) % every == 0
            if due:
                self.terms = {}
            if p.config.on_policy is not None:
                batch = self.roll(batch)
            loss_sum, counted = self.step(batch, epoch, lr)
            total += loss_sum
            count += counted
            self.global_step += 1
            self.epoch_examples += batch.size
            self.bar.update(1)
            if every:  # the log: a row every `log_every` steps, of the steps since the last one
                window += torch.cat([loss_sum.reshape(1), loss_sum.new_tensor([float(counted), float(batch.size)])])
                if due:
                    self.log_step(epoch, st.optimizer.param_groups[0]["lr"], window, time.perf_counter() - t_window,
                                  t0)
                    window.zero_()
                    t_window = time.perf_counter()
        if check is not None:
            self.identity_checked = True
            if "sha256:" + check.hexdigest()[:16] != p.source.fingerprint:
                self.stop()
                raise DistillError(
                    "the training data gave other examples in epoch 1 than in the pass that identified them "
                    "(random transforms in the Dataset, or a stream that changes), so a run folder cannot "
                    "tell whether it holds a run on these data; pass data_id='<a name you change whenever "
                    "the data change>' to fit, or train without run_dir (augment with config.augment)")
        return (float(distributed.all_sum(total) / distributed.all_sum(count).clamp_min(1)), lr,
                time.perf_counter() - t0)

    def log_step(self, epoch: int, lr: float, window: torch.Tensor, seconds: float, t0: float) -> None:
        """One ``kind=step`` row: the mean loss of the steps since the last row (every process's
        positions), the loss's terms at this step (process 0's part), lr, examples/s."""
        loss_sum, counted, examples = distributed.all_sum(window.clone()).tolist()
        terms, self.terms = self.terms or {}, None
        self.epoch_terms.append(terms)
        row = dict(kind="step", epoch=epoch + 1, step=self.global_step, lr=lr, loss=loss_sum / max(counted, 1.0),
                   **terms, examples_per_s=examples / max(seconds, 1e-9), seconds=time.perf_counter() - t0)
        for sink in (self.metrics, self.board):
            if sink is not None:
                sink.write(row)

    def roll(self, batch: Batch) -> Batch:
        """On-policy training: with the step's seeded draw (:func:`~distill.train.onpolicy.on_policy_step`),
        this process's slice of the batch with the student's own completions of its prompts
        (:func:`~distill.train.onpolicy.rollout`, from the step's generator; under bf16 autocast when
        the run is bf16); else the batch as it is. A rolled-out batch has no example indices: the
        teacher scores its tokens with a forward pass."""
        p, pol = self.plan, self.plan.config.on_policy
        if not on_policy_step(p.config.seed, self.global_step, pol.lam):
            return batch
        self.epoch_rollouts += 1
        if not len(batch):
            return Batch(batch.inputs, batch.labels, None, batch.size)
        t0 = time.perf_counter()
        with self.autocast:
            x, y = rollout(p.model, inputs_to(batch.inputs, p.device), p.source.prompt_lengths[batch.index], pol,
                           eos_id=p.source.eos_id, pad_id=p.source.pad_id,
                           generator=sampling_generator(p.config.seed, self.global_step, p.rank))
        self.epoch_generate_s += time.perf_counter() - t0
        return Batch(x, y, None, batch.size)

    def counted(self, batch: Batch) -> int:
        """The positions of ``batch`` its loss averages over: its rows, or for next-token objectives
        its valid target tokens (:func:`distill.losses.functional.valid_token_count`)."""
        if self.plan.tokens and batch.labels is not None:
            return int(valid_token_count(batch.labels, batch.mask))
        return len(batch)

    def step(self, batch: Batch, epoch: int, lr: float) -> tuple[torch.Tensor, int]:
        """One optimiser step on ``batch``, in ``accumulate`` micro-batches: for each, forward (the
        teacher's targets for the same inputs), objective, backward; then the step and the
        constraint. Each micro-batch's mean loss is weighted by its share of the positions the whole
        step counts (on every process), so the gradient is that of the step's mean over all of them.
        Returns ``(loss × positions, positions)`` of this process's part."""
        p = self.plan
        micro = batch.split(p.config.accumulate)
        if self.fsdp:  # FSDP2 gathers weights in every forward: every process runs as many micro-batches
            most = max(1, min(p.config.accumulate, -(-batch.size // p.world_size)))  # the largest slice's
            micro += [_empty(batch)] * (most - len(micro))
        counts = [self.counted(m) for m in micro]
        if p.tokens:  # tokens per sequence vary: the step's count comes from every process
            whole = float(distributed.all_sum(torch.tensor(float(sum(counts)))))
        else:  # rows: the global batch's size is known to every process
            whole = float(batch.size)
        optimizer = self.state.optimizer
        optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=p.device)
        for i, (m, n) in enumerate(zip(micro, counts)):
            last = i == len(micro) - 1
            sync = _local_grads(self.net) if p.world_size > 1 and not last else contextlib.nullcontext()
            with sync:
                loss = self.loss(m, epoch, lr)
                # DDP averages the processes' gradients: the factor w undoes that average
                (loss * (p.world_size * n / max(whole, 1.0))).backward()
            loss_sum += loss.detach() * n
        if p.features is not None:  # the projectors sit outside DDP's wrapper: their gradients are averaged here
            p.features.sync_gradients(p.world_size)
        optimizer.step()
        if self.constrain is not None:
            self.constrain()
        return loss_sum, sum(counts)

    def loss(self, batch: Batch, epoch: int, lr: float) -> torch.Tensor:
        """The objective's mean over ``batch`` (forward passes under autocast, the loss in float32)."""
        p, dev = self.plan, self.plan.device
        x = inputs_to(batch.inputs, dev)  # only this process's slice travels
        y = batch.labels.to(dev) if batch.labels is not None else None
        if len(batch):
            with self.autocast:  # bf16: the forward passes; float32 weights, logits and loss
                tb = (None if p.teacher is None else p.teacher.targets(x, batch.index) if batch.rows is None
                      else p.augmenter.targets(batch.rows, dev))
                out = logits_of(model_forward(self.net, x))
            out = out.float()
            tb = tb.float() if isinstance(tb, torch.Tensor) else tb
            # (next-token objectives check their inputs per position as they go: a pass over every
            # logit of [B, L, V] here would cost a tenth of a step)
            if not p.tokens and not torch.isfinite(out.detach()).all():  # else the objective's input check fires
                raise self.diverged(epoch, "the model's outputs became nan or infinite", lr, switchable=False)
            if batch.mixed is None:
                try:
                    loss = p.objective(out, tb, y, mask=batch.mask, epoch=epoch + 1)
                except ValueError:
                    if p.tokens and not torch.isfinite(out.detach()).all():
                        raise self.diverged(epoch, "the model's outputs became nan or infinite", lr,
                                            switchable=False) from None
                    raise
            else:
                loss = mixup_loss(p.objective, out, tb, y, batch.mixed[0].to(dev), batch.mixed[1], epoch=epoch + 1)
            if self.terms is not None and batch.mixed is None:  # a log step: the loss's terms, no gradient
                with torch.no_grad():
                    self.terms = {k: float(v) for k, v in p.objective.terms(
                        out.detach(), tb, y, mask=batch.mask, epoch=epoch + 1).items()}
            if p.features is not None:  # feature distillation: the pairs' weighted losses on this forward's features
                feature_terms = p.features.terms(batch.mask)
                loss = loss + sum(feature_terms.values())
                if self.terms is not None:
                    self.terms.update({k: float(v.detach()) for k, v in feature_terms.items()})
            if self.chance is None:  # (a feature term has no constant-prediction cost: judged without one)
                self.chance = (chance_loss(p.objective, out.detach(), tb, y, epoch=epoch + 1)
                               if p.features is None else (None, 0.0))
            if self.counts is not None and y.dim() == 1:  # class labels (not masks), checked by the objective
                self.counts.index_add_(0, y.long(), torch.ones_like(y, dtype=self.counts.dtype))
        else:  # an empty slice still joins DDP's gradient all-reduce, with zero gradient
            with self.autocast:
                loss = logits_of(model_forward(self.net, inputs_to(source_example(p.source), dev))).float().sum() * 0.0
        return loss

    # ---------------------------------------------------------------- the guard
    def guard(self, epoch: int, train_loss: float, lr: float) -> None:
        """Stop a diverged run (:func:`~distill.train.divergence.divergence`); warn once about a loss
        stuck at a constant prediction (:func:`~distill.train.divergence.stuck`)."""
        p = self.plan
        self.epoch_losses.append(train_loss)
        self.chance = distributed.from_process_0(self.chance)
        chance, floor = self.chance if self.chance is not None else (None, 0.0)
        if self.counts is not None:
            self.prior, self.counts = label_entropy(distributed.all_sum(self.counts).tolist()), None
        if p.config.divergence is None:
            return
        why = divergence(self.epoch_losses, chance, floor=floor, prior=self.prior)
        if why:
            raise self.diverged(epoch, why, lr, switchable=math.isfinite(train_loss))
        # sitting at a constant prediction from the start is the plateau many runs leave: say so once
        why = None if self.warned else stuck(self.epoch_losses, chance, floor=floor, steps_per_epoch=self.steps,
                                             prior=self.prior)
        if why:
            self.warned = True
            self.log(f"[warning] epoch {epoch + 1}: {why}; a run may sit there a few epochs before it learns, "
                     f"but if it stays, its ReLUs may have died or the learning rate {p.config.lr:.3g} is too high: "
                     f"try a lower lr (e.g. {p.config.lr / 3:.2g})")

    def diverged(self, epoch: int, why: str, lr: float, switchable: bool = True) -> TrainingDiverged:
        p, history = self.plan, self.state.history
        self.stop()
        hint = (f" for the T²-scaled soft loss at T = {p.objective.temperature:g}"
                if isinstance(p.objective, Distillation) else "")
        # the state saved last (epoch ``epoch``) may already be part of an exploded tail: say
        # which one it is and its loss rather than calling it good
        kept = (f"; the state after epoch {epoch} (train loss {history[-1]['train_loss']:.4g}) is kept in "
                f"{self.run.path}" if self.run is not None and epoch and history else "")
        # a loss curve can be misjudged; non-finite values cannot be trained past
        off = ("; if the run is in fact healthy, TrainConfig(divergence=None) (--no-guard) turns this check off"
               if switchable else "")
        return TrainingDiverged(f"training diverged at epoch {epoch + 1}: {why}; the learning rate {lr:.3g} "
                                f"is likely too high{hint}, try a lower lr (e.g. {p.config.lr / 3:.2g}){kept}{off}")

    def stop(self) -> None:
        """Leave the way an error leaves: the bar and the logs closed, the model back where it came from."""
        self.bar.close()
        if self.board is not None:
            self.board.close()
        self.plan.model.to(self.plan.home)

    # ---------------------------------------------------------------- evaluate and save
    def end_epoch(self, epoch: int, train_loss: float, lr: float, t_train: float, t0: float) -> None:
        """Process 0 evaluates val and test, keeps the best weights, logs, and saves the state. Under
        FSDP2 every process runs the evaluation (its forwards gather the sharded weights) and the
        gathering of the whole state for process 0; process 0 alone records, logs and saves."""
        p, st = self.plan, self.state
        if p.rank and not self.fsdp:
            return
        net = self.net if self.fsdp else p.model
        metrics = {split: self.evaluate(net, split, src) for split, src in (("val", p.val), ("test", p.test))
                   if src is not None}
        selecting = p.val is not None and p.config.select == "best"
        gathered = gathered_optim = None
        if self.fsdp:
            if self.saving or selecting:
                gathered = distributed.full_state(self.net, keep=p.rank == 0)
            if self.saving:
                gathered_optim = distributed.full_optimizer_state(st.optimizer, keep=p.rank == 0)
            if p.rank:
                return
        rec = dict(epoch=epoch + 1, lr=lr, train_loss=train_loss, train_seconds=t_train)
        msg = f"epoch {epoch + 1}/{p.config.epochs}  loss {train_loss:.4f}"
        for split, m in metrics.items():
            rec.update({f"{split}_errors": m["errors"], f"{split}_accuracy": m["accuracy"], f"{split}_nll": m["nll"]})
            rec.update({f"{split}_{k}": m[k] for k in FIDELITY if k in m})
            if p.tokens:
                rec[f"{split}_perplexity"] = m["perplexity"]
                msg += f"  {split} nll {m['nll']:.4f}  ppl {m['perplexity']:.1f}  acc {m['accuracy']:.3f}"
            else:
                msg += f"  {split} errors {m['errors']}/{m['n']}  nll {m['nll']:.4f}"
        if selecting:
            # a language model is judged by its validation NLL, a classifier by its errors
            judge = "val_nll" if p.tokens else "val_errors"
            prev = [h[judge] for h in st.history]
            if not prev or rec[judge] < min(prev):
                weights = gathered if gathered is not None else p.model.state_dict()
                st.best = {k: v.detach().cpu().clone() for k, v in weights.items()}
                st.best["epoch"] = torch.tensor(epoch + 1)
        if p.config.on_policy is not None:  # how many steps sampled, and what sampling cost
            rec.update(on_policy_steps=self.epoch_rollouts, generate_seconds=self.epoch_generate_s,
                       generate_share=self.epoch_generate_s / max(t_train, 1e-9))
        rec.update(_mean_terms(self.epoch_terms), step=self.global_step,
                   examples_per_s=self.epoch_examples / max(t_train, 1e-9), seconds=time.perf_counter() - t0)
        st.history.append(rec)
        if self.progress:
            (self.bar.write if self.show_bar else self.log)(f"{msg}  lr {lr:.4g}  {rec['seconds']:.1f}s")
        # the epoch's row before its state: a crash in between redoes the epoch and drops the row
        row = dict(kind="epoch", epoch=rec["epoch"], step=rec["step"], lr=lr, loss=train_loss,
                   **{k: v for k, v in rec.items() if k not in ("epoch", "step", "lr", "train_loss")})
        for sink in (self.metrics, self.board):
            if sink is not None:
                sink.write(row)
        if self.run is not None:
            full = (None if gathered is None
                    else ({k: v for k, v in gathered.items() if k not in self.tied}, gathered_optim))
            self.run.save_state(state_tensors(p.model, st.optimizer, st.generator, st.best, full=full),
                                dict(epoch=epoch + 1, history=st.history, config=p.config.to_dict(),
                                     init_weights=st.init))
        for cb in self.callbacks:
            cb.on_epoch_end(dict(rec))

    def evaluate(self, net, split: str, src) -> dict:
        """A held-out split's metrics, with the student's fidelity to its teacher when the teacher is
        a model: a classifier's from the teacher's logits kept from the first evaluation, a language
        model's per token from the teacher's forward pass on each batch."""
        p = self.plan
        if p.tokens and not self.fsdp and p.teacher is not None and p.teacher.module is not None:
            return lm_evaluate(net, src, teacher=p.teacher.forward)
        return evaluate(net, src, teacher_logits=self.held_out_teacher(split, src))

    def held_out_teacher(self, split: str, src):
        """A classifier teacher's logits on a held-out split, computed at the first evaluation and
        kept (the teacher is frozen), so that every epoch's record has the student's fidelity to it;
        None for language models (their test metrics have it), label masks, FSDP2, and teachers
        known only by stored outputs."""
        p = self.plan
        if (p.tokens or self.fsdp or p.teacher is None or p.teacher.module is None
                or getattr(src, "y", None) is None or src.y.dim() != 1):
            return None
        if split not in self.teacher_held_out:
            self.teacher_held_out[split] = predict_logits(p.teacher.forward, src)
        return self.teacher_held_out[split]

    def finish(self) -> tuple[int, str | None]:
        """After the last epoch: the kept epoch's weights (``select="best"``, with a note when later
        epochs collapsed), the model in eval mode back where it came from. ``(kept epoch, note)``."""
        p, st = self.plan, self.state
        self.bar.close()
        if self.board is not None:
            self.board.close()
        kept_epoch = p.config.epochs
        if p.world_size > 1 and p.config.select == "best":
            st.best = distributed.from_process_0(st.best)
        if self.fsdp:  # the passed model gets whole weights again, on every process: the kept or the last
            kept = (st.best if p.config.select == "best" and st.best is not None
                    else distributed.full_state(self.net, device=p.home))
            distributed.unshard_into(p.model, {k: v for k, v in kept.items() if k != "epoch"}, p.home)
            self.net = p.model  # the sharded twin is done with
        if p.config.select == "best" and st.best is not None:
            kept_epoch = int(st.best["epoch"])
            p.model.load_state_dict({k: v for k, v in st.best.items() if k != "epoch"})
        # an earlier epoch kept because later ones collapsed: say so rather than hide it
        note = collapse_note(st.history, kept_epoch) if p.config.select == "best" else None
        if note:
            self.log(f"[note] {note}")
        p.model.eval()
        p.model.to(p.home)
        if self.teacher_home is not None:
            p.teacher.to(self.teacher_home)
        return kept_epoch, note


def _mean_terms(rows: list[dict]) -> dict:
    """Each loss term's mean over the epoch's log steps."""
    names = {k for r in rows for k in r}
    return {k: sum(r[k] for r in rows if k in r) / sum(1 for r in rows if k in r) for k in sorted(names)}


def _empty(batch: Batch) -> Batch:
    """A micro-batch of no examples cut from ``batch``: its loss is the zero-gradient forward of an
    empty slice (:meth:`Loop.loss`), counted 0."""
    def cut(t):
        if t is None:
            return None
        return {k: v[:0] for k, v in t.items()} if isinstance(t, Mapping) else t[:0]
    return Batch(cut(batch.inputs), cut(batch.labels), cut(batch.index), batch.size, cut(batch.mask),
                 None if batch.mixed is None else (cut(batch.mixed[0]), batch.mixed[1]), cut(batch.rows))


@contextlib.contextmanager
def _local_grads(net):
    """Keep this micro-batch's gradients local (no all-reduce until the step's last backward): DDP's
    ``no_sync()``; FSDP2's ``set_requires_gradient_sync(False)``, restored after."""
    if hasattr(net, "set_requires_gradient_sync"):
        net.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            net.set_requires_gradient_sync(True)
    else:
        with net.no_sync():
            yield


def source_example(source):
    """One input example as a batch of one (for the zero-gradient step of an empty DDP slice)."""
    x, _, _ = next(iter(source.batches(1, None)))
    return x


def state_tensors(model, optimizer, gen: torch.Generator, best: dict | None, full: tuple | None = None) -> dict:
    """The run state as tensors. ``full``: ``(weights, optimiser state)`` gathered whole from an
    FSDP2-sharded model (:func:`distill.distributed.full_state`, without tied duplicates, and
    :func:`distill.distributed.full_optimizer_state`), saved instead of ``model``'s and ``optimizer``'s:
    the same tensors, under the same names, as one process saves. What the optimiser trains besides
    the model (:func:`trained_besides`: feature projectors) is saved as ``extra.<i>``."""
    weights, optim = full if full is not None else (unique_state(model), optimizer.state_dict()["state"])
    t = {f"model.{k}": v for k, v in weights.items()}
    for i, st in optim.items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                t[f"optim.{i}.{k}"] = v
    if full is None:
        for i, q in enumerate(trained_besides(model, optimizer)):
            t[f"extra.{i}"] = q.detach()
    t["rng.torch"] = torch.get_rng_state()
    t["rng.data"] = gen.get_state()
    for k, v in (best or {}).items():
        t[f"best.{k}"] = v
    return t


def restore_state(tensors: dict, model, optimizer, gen: torch.Generator) -> dict | None:
    model.load_state_dict(fill_tied(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}))
    sd = optimizer.state_dict()
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, i, name = k.split(".", 2)
            state.setdefault(int(i), {})[name] = v
    sd["state"] = state
    optimizer.load_state_dict(sd)
    extra = {int(k[6:]): v for k, v in tensors.items() if k.startswith("extra.")}
    _load_besides(model, optimizer, [extra[i] for i in sorted(extra)])
    torch.set_rng_state(tensors["rng.torch"])
    gen.set_state(tensors["rng.data"])
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
    return best or None


def trained_besides(model, optimizer) -> list:
    """The parameters ``optimizer`` trains besides ``model``'s, in its order: feature distillation's
    projectors (:mod:`distill.train.features`), which the run state saves as ``extra.<i>`` and a
    resumed run restores, but which are no part of the model."""
    own = {id(q) for q in model.parameters()}
    return [q for group in optimizer.param_groups for q in group["params"] if id(q) not in own]


def _load_besides(model, optimizer, values: list) -> None:
    """Restore :func:`trained_besides` from saved ``values`` (in the same order)."""
    params = trained_besides(model, optimizer)
    if len(params) != len(values):
        raise DistillError(f"the resume state holds {len(values)} trained tensors besides the model's, this run "
                           f"trains {len(params)}; delete state.* in the run folder to restart")
    with torch.no_grad():
        for q, v in zip(params, values):
            q.copy_(v.to(q.device))
