"""The training skeleton every task runs on: a :class:`~boat_vit.engine.task.TrainingTask` says what the task
brings (data, model, loss, metrics, recipe), :func:`run_training` does the rest.

The skeleton owns: processes (``torchrun``), threads, seeds, the run directory and the run checkpoint, the data
order (:class:`~boat_vit.engine.sampling.GlobalBatchSampler`: every sample augmented from its own seed),
gradient accumulation, mixed precision and the grad scaler, gradient clipping, the optimizer step, the
scheduler's per-update step, the EMA of the weights, the non-finite guard, the evaluation and checkpoint
cadence, best/last checkpoints, progress bars, the metrics table, the curves and the summary, and exact
resume. A run counts in epochs (evaluation and checkpoint after every epoch) or in iterations (evaluation
every ``eval_interval`` and at the end, checkpoint every ``checkpoint_interval`` and at every evaluation).
Every epoch (epoch runs) or iteration (iteration runs) starts from RNG states derived from the seed, so a
resumed run repeats what an uninterrupted one computes, bit for bit.
"""
import dataclasses
import time
from contextlib import nullcontext
from typing import Any, Optional

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..errors import Argument, ConfigError
from ..weights import WeightsReport
from .distributed import Distributed, setup_distributed
from .options import merge_resumed
from .run_checkpoint import RUN_CHECKPOINT_FORMAT, RUNNING_ENTRIES, RunCheckpoint
from .run_directory import RunDirectory
from .sampling import GlobalBatchSampler, ResumedBatches, SeededSamples, derive_seed, seed_everything
from .step import amp_dtype_for, optimizer_step, raise_if_non_finite, rng_state
from .task import EPOCHS, StepOutput, TrainingData, TrainingTask
from .threads import set_threads

__all__ = ["run_training"]


class _Running:
    """Training loss, images, skipped samples and seconds since the last metrics row.

    Summed over processes at every checkpoint and row: the main process keeps the sums, the others start again
    from zero, so a checkpoint holds what a resumed run needs to finish the row.
    """

    def __init__(self, loss: float = 0.0, images: float = 0.0, skipped: float = 0.0, seconds: float = 0.0):
        self.loss, self.images, self.skipped, self.seconds = loss, images, skipped, seconds

    def add(self, step: StepOutput, seconds: float) -> None:
        self.loss += float(step.loss.detach()) * step.images
        self.images += step.images
        self.skipped += step.skipped
        self.seconds += seconds

    def fold(self, world: Distributed) -> dict:
        totals = world.all_reduce_sum(torch.tensor([self.loss, self.images, self.skipped], dtype=torch.float64))
        if world.is_main:
            self.loss, self.images, self.skipped = (float(t) for t in totals)
        else:
            self.loss = self.images = self.skipped = 0.0
        return dict(loss=float(totals[0]), images=float(totals[1]), skipped=float(totals[2]), seconds=self.seconds)


def _resume_point(task: TrainingTask, resumed: Optional[RunCheckpoint]) -> Optional[RunCheckpoint]:
    """The checkpoint the run continues from (read here unless the caller read it), checked against the task."""
    config = task.config
    if config.resume is None:
        return None
    checkpoint = resumed if resumed is not None else RunCheckpoint.read(config.resume)
    if checkpoint.task != task.kind:
        raise ConfigError(Argument("resume", config.resume), f" is a {checkpoint.task} run, not a {task.kind} one")
    checkpoint.check_continuable()
    fields = [f.name for f in dataclasses.fields(config)]
    merge_resumed(checkpoint.config, dataclasses.asdict(config), config.resume, fields)
    return checkpoint


def run_training(task: TrainingTask, resumed: Optional[RunCheckpoint] = None) -> dict:
    """Trains (or continues) ``task``'s run.

    Args:
        task: The task, with its run's options.
        resumed: The checkpoint of ``task.config.resume`` where the caller has read it already.

    Returns:
        The summary written to ``summary.json`` (on the main process; ``{}`` on the others).

    Raises:
        ConfigError, DataError, CheckpointError, WeightsMismatchError: input that cannot run, before training.
        RunDirectoryError: the output folder cannot be used, or a file cannot be written.
        NonFiniteLossError: the loss or an evaluation became non-finite (nothing of it is saved).
    """
    config = task.config
    start_time = time.time()
    config.check()
    world = setup_distributed(config.device)
    try:
        set_threads(config.threads, config.workers, world.local_world_size)
        micro_batch = task.check_batching(world)
        seed_everything(config.seed)
        run = RunDirectory(config.output, resume=config.resume is not None, overwrite=config.overwrite) \
            if world.is_main else None
        checkpoint = _resume_point(task, resumed)
        data = task.build_data(world, checkpoint)
        if checkpoint is not None and checkpoint.model_args != task.model_args():
            raise checkpoint.damaged("model_args", f"{checkpoint.model_args!r} does not match the model of the run's "
                                                   f"options {task.model_args()!r}")
        model = task.build_model()
        weights = task.load_initial_weights(model) if checkpoint is None else None
        if weights is not None and world.is_main:
            print(weights.summary())
        model.to(world.device)
        if task.sync_batch_norm and world.enabled and world.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return _train(task, world, run, checkpoint, data, model, weights, micro_batch, start_time)
    finally:
        world.shutdown()


def _train(task: TrainingTask, world: Distributed, run: Optional[RunDirectory], checkpoint: Optional[RunCheckpoint],
           data: TrainingData, model: nn.Module, weights: Optional[WeightsReport], micro_batch: int,
           start_time: float) -> dict:
    from timm.utils import ModelEmaV3

    config = task.config
    sampler = GlobalBatchSampler(len(data.train_set), micro_batch, world.rank, world.world_size, config.seed)
    batches = ResumedBatches(sampler, 0)
    # The loader draws its worker seeds from its own generator, never from the global RNG: the model's random
    # stream (drop path) is then the same for any number of workers and after a resume.
    loader = DataLoader(SeededSamples(data.train_set), batch_sampler=batches, num_workers=config.workers,
                        collate_fn=data.collate, persistent_workers=config.workers > 0, generator=torch.Generator())
    updates_per_epoch = len(sampler) // task.accum_steps
    if updates_per_epoch == 0:
        raise ConfigError(f"fewer than {task.accum_steps} batches per epoch: lower ", Argument("accum_steps"))
    optimizer = task.build_optimizer(model)
    scheduler, schedule = task.build_scheduler(optimizer, updates_per_epoch)
    amp_dtype = amp_dtype_for(world.device, config.amp, config.amp_dtype)
    scaler = torch.amp.GradScaler(world.device.type, enabled=amp_dtype == torch.float16)
    ema = ModelEmaV3(model, decay=task.ema_decay) if task.ema_decay else None

    step, rows, best, running = 0, [], None, _Running()
    if checkpoint is not None:
        state = checkpoint.state
        checkpoint.load_into(model)
        if ema is not None:
            checkpoint.load_into(ema.module, ema=True)
        checkpoint.restore_training_state(optimizer, scheduler, scaler)
        step, rows, best = state["step"], state["metrics"], state["best"]
        if world.is_main:
            running = _Running(**{k: state["running"][k] for k in RUNNING_ENTRIES})
    ddp_model = DistributedDataParallel(model) if world.enabled else model
    loop = _Loop(task, world, run, model, ddp_model, ema, optimizer, scheduler, scaler, amp_dtype, schedule,
                 updates_per_epoch, rows, best, running)
    if task.unit == EPOCHS:
        loop.by_epochs(loader, sampler, start=step)
    else:
        loop.by_iterations(loader, sampler, batches, start=step)

    summary = {}
    if world.is_main:
        summary = dict(task.summary(loop.rows, loop.best, weights), wall_time_s=time.time() - start_time,
                       world_size=world.world_size, output=str(config.output), args=dataclasses.asdict(config))
        run.write_summary(summary)
    return summary


class _Loop:
    """The training loop of one run: micro-steps, updates, evaluations and checkpoints."""

    def __init__(self, task, world, run, model, ddp_model, ema, optimizer, scheduler, scaler, amp_dtype, schedule,
                 updates_per_epoch, rows, best, running):
        self.task, self.world, self.run, self.model, self.ddp_model, self.ema = task, world, run, model, ddp_model, ema
        self.optimizer, self.scheduler, self.scaler, self.amp_dtype = optimizer, scheduler, scaler, amp_dtype
        self.schedule, self.updates_per_epoch = schedule, updates_per_epoch
        self.rows, self.best, self.running = rows, best, running
        self.config = task.config
        self.show = self.config.progress and world.is_main

    def micro_step(self, batch: Any, step: int, where: str) -> tuple[bool, StepOutput]:
        """Forward and backward of one micro-batch; an optimizer step (and scheduler step) at the last one of
        an update. Returns whether an update happened."""
        accum = self.task.accum_steps
        last_micro_step = (step + 1) % accum == 0
        sync = nullcontext() if (last_micro_step or not self.world.enabled) else self.ddp_model.no_sync()
        with sync:
            output = self.task.training_step(self.ddp_model, batch, self.world, self.amp_dtype)
            raise_if_non_finite(output.loss, self.world, where, self.config.output)
            self.scaler.scale(output.loss / accum).backward()
        if last_micro_step:
            optimizer_step(self.model, self.optimizer, self.scaler, self.config.clip_grad)
        return last_micro_step, output

    def updated(self, updates: int) -> None:
        self.scheduler.step_update(updates)
        if self.ema is not None:
            self.ema.update(self.model, step=updates)

    def evaluate(self, step: int) -> bool:
        """Evaluates, appends the metrics row and keeps the best; returns whether it is the best so far."""
        evaluation = self.task.evaluate(self.model, self.ema.module if self.ema is not None else None, self.world,
                                        self.amp_dtype, self.show, step)
        totals = self.running.fold(self.world)
        row = {self.task.unit: step, "train_loss": totals["loss"] / max(totals["images"], 1),
               "lr": self.optimizer.param_groups[0]["lr"], **evaluation.row,
               "images_per_s": totals["images"] / max(totals["seconds"], 1e-9),
               "skipped_images": int(totals["skipped"]) + evaluation.row.get("skipped_images", 0)}
        self.rows.append(row)
        self.running = _Running()
        is_best = self.best is None or evaluation.score > self.best["score"]
        if is_best:
            self.best = dict(evaluation.best, score=evaluation.score, step=step)
        if evaluation.line and self.show:
            tqdm.write(evaluation.line)
        return is_best

    def save(self, step: int, is_best: bool) -> None:
        """Writes the checkpoint (and best.pth for a new best), the metrics table and the curves (main process)."""
        running = self.running.fold(self.world)
        if self.run is not None:
            task = self.task
            state = dict(
                format=RUN_CHECKPOINT_FORMAT, task=task.kind, config=dataclasses.asdict(self.config),
                model_args=task.model_args(), model=self.model.state_dict(),
                ema=self.ema.state_dict() if self.ema is not None else None, optimizer=self.optimizer.state_dict(),
                scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(), rng=rng_state(), step=step,
                metrics=self.rows, best=self.best, running=running, **task.checkpoint_extras(),
            )
            self.run.save_checkpoint(state, is_best)
            self.run.write_metrics(self.rows, task.metric_fields)
            self.run.plot(self.rows, task.plot_panels, title=task.title(), x=task.unit,
                          x_offset=1 if task.unit == EPOCHS else 0)
        self.world.barrier()

    def by_epochs(self, loader: DataLoader, sampler: GlobalBatchSampler, start: int) -> None:
        """Epoch ``start`` to the end: each epoch from its own seed, evaluated and saved."""
        total = self.schedule.total
        for epoch in range(start, total):
            seed_everything(derive_seed(self.config.seed, epoch))
            sampler.set_epoch(epoch)
            self.ddp_model.train()
            updates, started = epoch * self.updates_per_epoch, time.perf_counter()
            bar = tqdm(loader, desc=f"train {epoch + 1}/{total}", disable=not self.show, leave=False,
                       dynamic_ncols=True)
            self.optimizer.zero_grad(set_to_none=True)
            for micro, batch in enumerate(bar):
                stepped, output = self.micro_step(batch, micro, f"epoch {epoch + 1}, step {micro + 1}")
                if stepped:
                    updates += 1
                    self.updated(updates)
                self.running.add(output, 0.0)
                self.running.seconds = time.perf_counter() - started
                bar.set_postfix(loss=f"{float(output.loss.detach()):.4f}",
                                lr=f"{self.optimizer.param_groups[0]['lr']:.2e}",
                                img_s=f"{self.running.images * self.world.world_size / max(self.running.seconds, 1e-9):.1f}")
            self.running.seconds = time.perf_counter() - started
            is_best = self.evaluate(epoch)
            self.save(epoch + 1, is_best)

    def by_iterations(self, loader: DataLoader, sampler: GlobalBatchSampler, batches: ResumedBatches,
                      start: int) -> None:
        """Iteration ``start`` to the end, each from its own seed; evaluations and checkpoints on schedule."""
        schedule, iteration = self.schedule, start
        bar = tqdm(total=schedule.total, initial=iteration, desc="train", disable=not self.show, dynamic_ncols=True)
        self.ddp_model.train()
        while iteration < schedule.total:
            epoch, batches.start = divmod(iteration, len(sampler))
            sampler.set_epoch(epoch)
            for batch in loader:
                seed_everything(derive_seed(self.config.seed, iteration))
                started = time.perf_counter()
                _, output = self.micro_step(batch, 0, f"iteration {iteration + 1}")
                iteration += 1
                self.updated(iteration)
                self.running.add(output, time.perf_counter() - started)
                bar.update()
                bar.set_postfix(loss=f"{float(output.loss.detach()):.4f}",
                                lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
                evaluate_now = iteration % schedule.eval_interval == 0 or iteration == schedule.total
                is_best = False
                if evaluate_now:
                    is_best = self.evaluate(iteration)
                    self.ddp_model.train()
                if evaluate_now or iteration % schedule.checkpoint_interval == 0:
                    self.save(iteration, is_best)
                if iteration >= schedule.total:
                    break
        bar.close()
