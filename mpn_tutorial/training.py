"""The one training loop, for every loss: contrastive, triplet, cross-entropy, and cross-entropy + MPN.

Each epoch's numbers are one history row: ``{"epoch", "step", "train": {loss terms}, "val": {metrics}, "attention":
{diagnostics}, "lr", "seconds"}``. One path for one process and many (with one, the "gather" of the global batch is
the identity); the step waits for the device once per :data:`LOG_INTERVAL` steps.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from mpn_tutorial.callbacks import Callback, TrainState
from mpn_tutorial.config import OPTIMIZERS, TrainConfig, create_model
from mpn_tutorial.controls import pass_messages, provide_labels
from mpn_tutorial.data.build import Datasets, build_datasets, iterate_batches
from mpn_tutorial.data.sampler import PKSampler
from mpn_tutorial.errors import TrainingDiverged
from mpn_tutorial.evaluation import attention_diagnostics, diagnostic_batches, evaluate, evaluate_on_test
from mpn_tutorial.losses import ContrastiveLoss, MessagePassingObjective, SmoothedCrossEntropy, TripletLoss
from mpn_tutorial.models import MetricLearningModel, ModelOutput
from mpn_tutorial.tools.checkpoints import (
    CheckpointError,
    config_of,
    load_checkpoint,
    model_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from mpn_tutorial.tools.distributed import SingleProcess
from mpn_tutorial.tools.runtime import resolve_device, seed_everything

RUN_FILES = ("last.pt", "best.pt", "metrics.csv")
LOG_INTERVAL = 25  # steps between the waits for the device (progress bar, divergence check)


@dataclass
class TrainResult:
    """The outcome of :func:`train`: the best model (by validation Recall@1) and its numbers."""

    config: TrainConfig
    model: MetricLearningModel
    history: list[dict]
    best_epoch: int
    val_metrics: dict[str, float]
    test_metrics: dict[str, float]
    seconds: float


def make_optimizer(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The run's optimizer over the trainable parameters (``config.OPTIMIZERS``)."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    return OPTIMIZERS[config.optimizer](parameters, lr=config.lr, weight_decay=config.weight_decay)


def loss_function(config: TrainConfig) -> Callable[[ModelOutput, torch.Tensor], tuple[torch.Tensor, dict]]:
    """The loss a configuration trains with: (ModelOutput, labels) -> (scalar, {term: detached scalar})."""
    if config.loss in ("contrastive", "triplet"):
        pair_loss = (ContrastiveLoss(config.contrastive_margin) if config.loss == "contrastive"
                     else TripletLoss(config.triplet_margin, config.triplet_mining))

        def on_embeddings(output: ModelOutput, labels: torch.Tensor):
            total = pair_loss(output.embeddings.float(), labels)
            return total, {config.loss: total.detach()}

        return on_embeddings
    if config.loss == "ce":
        cross_entropy = SmoothedCrossEntropy(config.label_smoothing, config.temperature)

        def on_backbone_logits(output: ModelOutput, labels: torch.Tensor):
            total = cross_entropy(output.backbone_logits.float(), labels)
            return total, {"backbone_ce": total.detach()}

        return on_backbone_logits
    objective = MessagePassingObjective(config.temperature, config.label_smoothing, config.backbone_loss_weight,
                                        config.mpn_loss_weight)

    def on_both_logits(output: ModelOutput, labels: torch.Tensor):
        terms = objective.terms(output.backbone_logits, output.mpn_logits, labels)
        return objective.combine(terms), {name: value.detach() for name, value in terms.items()}

    return on_both_logits


def lr_factor(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The learning rate's multiplier at a step (0-based), for ``LambdaLR``: ``"step"`` multiplies by
    ``lr_decay_factor`` from each epoch of ``lr_decay_epochs`` on (epoch e: steps from e * steps_per_epoch);
    ``"cosine"`` falls from 1 to 0 over the run, half a cosine wave."""
    total = config.epochs * steps_per_epoch
    if config.lr_schedule == "cosine":
        return lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    return lambda step: config.lr_decay_factor ** sum(step // steps_per_epoch >= e for e in config.lr_decay_epochs)


def prepare_run_folder(config: TrainConfig, folder: Path, resume: bool, overwrite: bool) -> dict | None:
    """Check that training into ``folder`` loses nothing; return the checkpoint to resume from, if any.
    A folder holding another run is refused unless ``overwrite``; ``resume`` continues the same run
    only (the same settings, apart from where and how fast it computes)."""
    existing = [name for name in RUN_FILES if (folder / name).exists()]
    if not existing:
        return None
    last, best = folder / "last.pt", folder / "best.pt"
    stored = last if last.exists() else best if best.exists() else None
    if resume and stored is not None:
        checkpoint = load_checkpoint(stored)
        saved = config_of(checkpoint, stored)  # defaults filled in for older checkpoints
        if saved.preset != config.preset:
            raise CheckpointError(f"checkpoint {stored} was trained with preset {saved.preset!r}, not "
                                  f"{config.preset!r}; use --preset {saved.preset} or another checkpoint directory")
        changed = config.differences(saved)
        if not changed:  # the same run: continue it (without a last.pt it never finished an epoch: restart it)
            return checkpoint if stored == last else None
        if not overwrite:
            listed = ", ".join(f"{name}={new!r} (the folder's run: {old!r})" for name, (new, old) in changed.items())
            raise CheckpointError(f"{folder} holds a different run; --resume continues the same settings only, and "
                                  f"this run changes {listed}. Train into another --checkpoint-dir, or pass "
                                  "--overwrite to replace it.")
    if not overwrite:
        raise CheckpointError(f"{folder} already holds a run ({', '.join(existing)}); nothing was changed. Use "
                              "--resume to continue that run, another --checkpoint-dir for a new one, or --overwrite "
                              "to replace it.")
    return None


def train(config: TrainConfig, callbacks: Sequence[Callback] = (), checkpoint_dir: str | os.PathLike | None = None,
          resume: bool = False, progress: bool = True, datasets: Datasets | None = None, evaluate_test: bool = True,
          compute_nmi: bool = False, distributed=None, overwrite: bool = False) -> TrainResult:
    """Train a model as ``config`` says (:class:`TrainConfig`, ``presets.py``) for ``config.epochs`` epochs of P×K
    batches, evaluating the *validation classes* (carved from the training classes) after each; return the best
    model by validation Recall@1 (never by a test number), evaluated on the test classes if ``evaluate_test``
    (with NMI if ``compute_nmi``: k-means, slower).

    ``callbacks``: observers (snapshots, attention capture, logging). ``checkpoint_dir``: where ``last.pt`` and
    ``best.pt`` go (None: nothing on disk); ``resume`` continues the same run from its ``last.pt``, bit for bit on
    the CPU; ``overwrite`` allows replacing another run there. ``datasets``: already-built datasets (default:
    ``build_datasets(config)``). ``distributed``: a :class:`~mpn_tutorial.tools.distributed.DistributedContext`.
    """
    config.validate()
    start_time = time.perf_counter()
    context = SingleProcess(resolve_device(config.device)) if distributed is None else distributed
    device = context.device
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    checkpoint = prepare_run_folder(config, folder, resume, overwrite) if folder is not None else None
    datasets = build_datasets(config) if datasets is None else datasets
    num_classes = int(datasets.train.num_classes)
    model = create_model(config, num_classes).to(device)
    seed_everything(config.seed)  # the run's own random stream: dropout, augmentation
    if config.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(config, model)
    sampler = context.shard_sampler(PKSampler(datasets.train.labels, config.classes_per_batch,
                                              config.samples_per_class, seed=config.seed,
                                              num_batches=config.batches_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config, len(sampler)))  # stepped per step
    compute_loss = loss_function(config)
    reads_labels = config.mpn_attention.startswith("oracle")
    # a control leaves some of the attention's maps unused (module docstring of models.py), and so does a warm-up
    some_unused = config.mpn_attention != "learned" or config.message_warmup_epochs > 0
    trained = context.wrap(model, find_unused_parameters=model.mpn is not None and some_unused)
    watched = (diagnostic_batches(datasets.val, config.attention_batches, config.classes_per_batch,
                                  config.samples_per_class) if model.has_attention else [])

    state = TrainState(config=config, model=model, datasets=datasets)
    best_state = model_state(model) if checkpoint is None else _restore(checkpoint, optimizer, scheduler, state)
    for callback in callbacks:
        callback.on_train_start(state)
    use_amp = config.amp and device.type == "cuda"

    while state.epoch < config.epochs:
        epoch = state.epoch + 1
        if epoch - 1 in config.reload_best_after and state.best_epoch:  # as the release at its learning-rate drops
            model.load_state_dict(best_state)
        model.train()
        if model.mpn is not None and config.message_warmup_epochs:  # the warm-up's schedule: messages from then on
            pass_messages(model, epoch > config.message_warmup_epochs)
        sampler.set_epoch(epoch)
        epoch_start = time.perf_counter()
        sums: dict[str, torch.Tensor] = {}
        diverged_at = torch.zeros((), dtype=torch.long, device=device)  # the first step with NaN, 0 while none
        batches = tqdm(iterate_batches(datasets.train, sampler, config.num_workers, device.type == "cuda"),
                       total=len(sampler), desc=f"epoch {epoch}/{config.epochs}",
                       disable=not (progress and context.is_main), leave=False)
        for index, (images, labels) in enumerate(batches, 1):
            images, labels = images.to(device, non_blocking=True), labels.to(device)
            if config.channels_last and device.type == "cuda":
                images = images.contiguous(memory_format=torch.channels_last)
            labels = context.gather_labels(labels)  # the classifiers and the MPN see the global batch
            if reads_labels:
                provide_labels(model, labels)  # the oracle control's attention is the labels'
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                output = trained(images, gather=context.gather)
                loss, terms = compute_loss(output, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # under DDP this also averages the gradients across processes
            optimizer.step()
            scheduler.step()
            state.step += 1
            finite = torch.isfinite(loss) & torch.isfinite(output.embeddings.detach()).all()
            diverged_at.masked_fill_(~finite & (diverged_at == 0), state.step)  # on the device: no wait
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value.float()
            if index % LOG_INTERVAL == 0 or index == len(sampler):  # the one wait for the device
                _stop_if_diverged(diverged_at, epoch)
                batches.set_postfix(loss=f"{sum(sums.values()).item() / index:.3f}")
        train_seconds = time.perf_counter() - epoch_start  # the steps only (the last wait synchronised the device)
        state.epoch = epoch

        row = {"epoch": epoch, "step": state.step,
               "train": {name: value.item() / len(sampler) for name, value in sums.items()},
               "val": evaluate(model, datasets.val, ks=(1, 2, 4, 8), batch_size=config.eval_batch_size)}
        if watched:
            row["attention"] = attention_diagnostics(model, watched)
        row.update(lr=optimizer.param_groups[0]["lr"], train_seconds=round(train_seconds, 3),
                   seconds=round(time.perf_counter() - epoch_start, 3))
        state.history.append(row)
        if row["val"]["recall@1"] > state.best_metric:
            state.best_metric, state.best_epoch, best_state = row["val"]["recall@1"], epoch, model_state(model)
            if folder is not None and context.is_main:
                save_checkpoint(folder / "best.pt", config, best_state, num_classes, epoch=epoch,
                                val_metrics=row["val"])
        if folder is not None and context.is_main:
            save_checkpoint(folder / "last.pt", config, model, num_classes, optimizer=optimizer.state_dict(),
                            scheduler=scheduler.state_dict(), epoch=state.epoch, step=state.step,
                            history=state.history, best_epoch=state.best_epoch, best_metric=state.best_metric,
                            best_state=best_state, rng=rng_state())
        for callback in callbacks:
            callback.on_epoch_end(state)

    model.load_state_dict(best_state)
    model.eval()
    val_metrics = dict(state.history[state.best_epoch - 1]["val"]) if state.best_epoch else {}
    test_metrics: dict[str, float] = {}
    if evaluate_test and context.is_main:
        test_metrics = evaluate_on_test(model, datasets, config.dataset, compute_nmi=compute_nmi,
                                        batch_size=config.eval_batch_size, num_workers=config.num_workers,
                                        seed=config.seed)
    return TrainResult(config, model, state.history, state.best_epoch, val_metrics, test_metrics,
                       time.perf_counter() - start_time)


def _restore(checkpoint: dict, optimizer, scheduler, state: TrainState) -> dict:
    """Continue from a ``last.pt``: model, optimizer, scheduler, progress and random state; returns the best state."""
    state.model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    state.epoch, state.step, state.history = checkpoint["epoch"], checkpoint["step"], list(checkpoint["history"])
    state.best_epoch, state.best_metric = checkpoint["best_epoch"], checkpoint["best_metric"]
    set_rng_state(checkpoint["rng"])
    return checkpoint["best_state"]


def _stop_if_diverged(diverged_at: torch.Tensor, epoch: int) -> None:
    """Stop a diverging run, saying where, instead of training on NaNs (checked every LOG_INTERVAL steps)."""
    step = int(diverged_at)
    if step:
        raise TrainingDiverged(f"training diverged at step {step} (epoch {epoch}): the loss or the embeddings became "
                               "NaN or infinite. Lower the learning rate (--lr) or check the input data.")
