"""The training loop every method shares.

Contract: `model(batch)` returns a dict with a scalar tensor "loss" (a mean over the batch) and
any other scalars worth logging. The loop moves the batch to the device, runs forward/backward
(AMP optional), clips, steps optimiser and per-step schedule, logs, checkpoints and can resume
exactly: the data order of every epoch is a pure function of (seed, epoch), the position inside
the epoch is saved, and so are the random states of every process.

Under torchrun each process gets `batch_size / world_size` samples per step from an equal-size
shard (DistributedSampler, drop_last), DDP averages the gradients, BatchNorm layers use the global
batch's statistics (`convert_sync_batchnorm`) and each sample's random draws come from its own
(seed, epoch, index) streams (`SampleStreams`), so N processes take the same steps as one process
with the same global batch, up to float rounding.

Honest failure: after every step the checkpointed parameters and buffers (BN statistics included)
are checked; non-finite values, or `max_nonfinite` non-finite losses in a row, end the run with
`TrainingStopped` (exit code 3 in the CLI) - never a checkpoint of the broken state, never a
return value that callers could mistake for a finished run.

The loop is `Trainer.run`; resume, save, log, evaluate and the optimiser step are its named methods
(hooks a subclass may override). Over ~400 lines because those steps are one concept, kept together.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from pointlift.engine import distributed as dist_utils
from pointlift.engine.allocator import keep_freed_memory
from pointlift.engine.amp import amp_setup, autocast
from pointlift.engine.checkpoint import (checkpoint_files, clean_stale_files, load_checkpoint, load_model_state,
                                         model_state_for_checkpoint, save_checkpoint)
from pointlift.engine.config import TrainConfig
from pointlift.engine.device import move_to_device
from pointlift.engine.metrics import MetricsLogger
from pointlift.engine.optim import build_optimizer, build_scheduler
from pointlift.engine.rundir import last_checkpoint
from pointlift.engine.sync_batchnorm import convert_sync_batchnorm
from pointlift.engine.seed import SampleStreams, derive_seed, get_rng_state, make_generator, seed_everything, \
    seed_worker, set_rng_state
from pointlift.errors import PointliftConfigError, PointliftError


@dataclass
class TrainResult:
    history: list[dict]  # the logged rows: train windows and per-epoch evaluations
    step: int  # optimiser steps taken in total (including before a resume)
    checkpoint_path: Path | None  # `.../checkpoints/last.safetensors`, None if never written
    stopped_early: bool  # interrupted or stopped by non-finite losses
    stop_reason: str = "completed"  # "completed" | "nonfinite" | "interrupted"
    epoch: int = 0  # completed epochs


class TrainingStopped(PointliftError):
    """The run stopped on non-finite values. Metrics up to the stop and the last finite checkpoint are
    kept; nothing else is written. The CLI prints the message and exits with `exit_code`."""

    exit_code = 3

    def __init__(self, message: str, result: "TrainResult"):
        super().__init__(message)
        self.result = result


def nonfinite_tensors(module: nn.Module) -> list[str]:
    """Names of the checkpointed parameters and buffers holding NaN or inf (empty when all are finite)."""
    state = {k: v for k, v in model_state_for_checkpoint(module).items() if v.is_floating_point()}
    if not state:
        return []
    # A finite sum proves a tensor finite (NaN and inf survive summation), and a sum reads the tensor without
    # writing a mask of its size (on CPU about 12x faster for spunet-v1m1: bench/finite_check.py). A sum
    # that is not finite (a non-finite entry, or finite entries whose sum overflows) takes the exact test.
    if bool(torch.isfinite(torch.stack([v.sum().float() for v in state.values()])).all()):  # one device sync
        return []
    flags = torch.stack([torch.isfinite(v).all() for v in state.values()])
    if bool(flags.all()):
        return []
    return [k for k, ok in zip(state, flags.tolist()) if not ok]


class EpochKeys(torch.utils.data.Sampler):
    """The (epoch, index) keys still to draw in the current epoch; the trainer refills it every epoch."""

    def __init__(self):
        self.keys: list[tuple[int, int]] = []

    def __iter__(self):
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


def epoch_indices(num_samples: int, epoch: int, seed: int, rank: int = 0, world_size: int = 1) -> list[int]:
    """This process's sample indices for `epoch`: a (seed, epoch)-shuffled, equal-size shard."""
    sampler = DistributedSampler(range(num_samples), num_replicas=world_size, rank=rank, shuffle=True,
                                 seed=seed, drop_last=True)
    sampler.set_epoch(epoch)
    return list(sampler)


def _scalars(outputs: dict) -> dict[str, torch.Tensor]:
    """The loggable entries of a model's output: numbers and one-element tensors."""
    found = {}
    for key, value in outputs.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            found[key] = value.detach().float().reshape(())
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            found[key] = torch.tensor(float(value))
    return found


@dataclass
class TrainState:
    """The counters a checkpoint carries so that a resumed run continues exactly where it stopped."""

    step: int = 0  # optimiser steps taken
    epoch: int = 0  # completed epochs
    epoch_batch: int = 0  # batches of the current epoch already drawn (skipped ones included)
    evaluated_at: int = -1  # step of the last evaluation
    window_sums: dict[str, float] = field(default_factory=dict)  # logged scalars since the last log row
    window_steps: int = 0


class Trainer:
    """One training run, its loop cut into named steps (`train` below is the entry point).

    Setup happens in `__init__` (processes, run directory, optimiser, AMP, resume); `run` is the loop:
    per epoch the unseen part of this rank's shard (one DataLoader, refilled), per batch `train_step` (forward, the
    non-finite checks, `optimizer_step`) and `after_step` (log, save, stop); after each epoch `evaluate`;
    at the end the last log row, evaluation and checkpoint. Each step is a method a subclass can
    override as a hook, but the order of random draws and optimiser calls is the contract.
    """

    def __init__(self, model: nn.Module, dataset, config: TrainConfig, run_dir: str | Path, *,
                 collate_fn: Callable | None, resume: bool, device, progress: bool,
                 eval_fn: Callable[[nn.Module, int], dict] | None, config_for_checkpoint: Any,
                 model_spec: dict | None, interrupt_after_step: int | None):
        self.config, self.collate_fn, self.eval_fn = config, collate_fn, eval_fn
        self.config_for_checkpoint, self.model_spec = config_for_checkpoint, model_spec
        self.interrupt_after_step, self.progress = interrupt_after_step, progress
        keep_freed_memory()  # library callers too; before any DataLoader worker is forked
        self._setup_processes(device, run_dir)
        self._setup_data(dataset)
        self._setup_model(model)
        self.state = TrainState()
        self.stop_reason, self.stop_detail = "completed", ""
        self.nonfinite_in_a_row = 0
        self.metrics_rows = None  # rows of metrics.csv a resumed run keeps
        rng_to_restore = self.resume_from_checkpoint() if resume else None
        self.logger = None
        if self.is_main:
            self.logger = MetricsLogger(self.run_dir / "metrics.csv", keep_rows=self.metrics_rows if resume else None,
                                        tensorboard_dir=self.run_dir / "tensorboard")
        self.history: list[dict] = list(self.logger.rows) if self.logger is not None else []
        self.checkpointed_at = self.state.step if resume else -1
        if rng_to_restore is not None:
            set_rng_state(rng_to_restore)  # last, so nothing above consumes randomness after it

    # ------------------------------------------------------------------------------------- setup

    def _setup_processes(self, device, run_dir) -> None:
        context = dist_utils.init_distributed(device)
        self.device, self.rank, self.world, self.is_main = (context.device, context.rank, context.world_size,
                                                            context.is_main)
        self.run_dir = Path(run_dir)
        self.checkpoint_stem = last_checkpoint(self.run_dir)
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            clean_stale_files(self.checkpoint_stem)  # temporaries of a save that a crash interrupted

    def _setup_data(self, dataset) -> None:
        config, world = self.config, self.world
        if config.batch_size % world:
            raise PointliftConfigError(f"batch_size: {config.batch_size} is not divisible by the {world} processes")
        self.per_rank = config.batch_size // world
        self.num_samples = len(dataset)
        self.samples = SampleStreams(dataset, config.seed)  # sample i of epoch e: the same draws on any rank
        self.epoch_keys = EpochKeys()  # what the loader draws; epoch_loader() refills it every epoch
        self.loader: DataLoader | None = None  # built by the first epoch_loader(), kept for the run
        self.steps_per_epoch = len(epoch_indices(self.num_samples, 0, config.seed, self.rank, world)) // self.per_rank
        if self.steps_per_epoch == 0:
            raise PointliftConfigError(f"batch_size: {config.batch_size} is larger than the dataset "
                                       f"({self.num_samples} samples): no full batch to train on")
        self.total_steps = (config.max_steps if config.max_steps is not None
                            else config.epochs * self.steps_per_epoch)

    def _setup_model(self, model: nn.Module) -> None:
        config, device = self.config, self.device
        seed_everything(config.seed + self.rank)
        model.to(device)
        self.module = model  # the bare network: what is checkpointed, evaluated and optimised
        if self.world > 1:
            convert_sync_batchnorm(model)  # BN statistics over the global batch, as in one process
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=bool(getattr(model, "ddp_find_unused_parameters", False)))
        self.model = model  # what runs forward (DDP-wrapped under torchrun)
        self.optimizer = build_optimizer(self.module, config.optim)
        self.scheduler = build_scheduler(self.optimizer, config.optim, self.total_steps, self.steps_per_epoch)
        self.amp_dtype, self.scaler = amp_setup(config, device)
        self.trainable = [p for p in self.module.parameters() if p.requires_grad]

    def resume_from_checkpoint(self):
        """Load `last` into model, optimiser, scheduler, scaler and counters; returns this rank's random
        state to restore once setup is done (None if the checkpoint has none)."""
        state, meta = load_checkpoint(self.checkpoint_stem)
        load_model_state(self.module, state, checkpoint_files(self.checkpoint_stem)[0])
        extra = meta.get("extra", {})
        if extra.get("global_batch") not in (None, self.config.batch_size):
            raise PointliftConfigError(f"batch_size: {self.config.batch_size} differs from the resumed run's "
                                       f"{extra['global_batch']}; resuming would change the data order")
        if meta.get("optimizer") is not None:
            self.optimizer.load_state_dict(meta["optimizer"])
        if meta.get("scheduler") is not None:
            self.scheduler.load_state_dict(meta["scheduler"])
        if self.scaler is not None and extra.get("scaler"):
            self.scaler.load_state_dict(extra["scaler"])
        self.state = TrainState(step=int(meta["step"]), epoch=int(extra.get("epoch", 0)),
                                epoch_batch=int(extra.get("epoch_batch", 0)),
                                evaluated_at=int(extra.get("evaluated_at", -1)),
                                window_sums=dict(extra.get("window_sums", {})),
                                window_steps=int(extra.get("window_steps", 0)))
        self.metrics_rows = extra.get("metrics_rows")
        rng_states = meta.get("rng")
        if isinstance(rng_states, list) and rng_states:
            if len(rng_states) != self.world:
                warnings.warn(f"resuming with {self.world} processes from a checkpoint of {len(rng_states)}: "
                              "random states cannot be restored exactly")
            return rng_states[self.rank % len(rng_states)]
        return None

    # ------------------------------------------------------------------------------------- named steps

    def state_is_finite(self, after: str) -> bool:
        """True when every checkpointed tensor is finite on every rank; else records why the run stops."""
        broken = nonfinite_tensors(self.module)
        if dist_utils.all_true(not broken, self.device):
            return True
        self.stop_reason = "nonfinite"
        self.stop_detail = (f"non-finite parameters or buffers {after}"
                            + (f" ({len(broken)} tensors, e.g. {', '.join(broken[:3])})" if broken
                               else " on another rank"))
        return False

    def save(self, current_step: int) -> None:
        """Checkpoint `last` (rank 0 writes, every rank's random state inside); a failed write stops all."""
        if not self.state_is_finite(f"before saving step {current_step}"):  # e.g. after an eval that touched BN
            return
        rng_states = dist_utils.all_gather_object(get_rng_state())
        failure = None
        if self.is_main:
            s = self.state
            extra = {"epoch": s.epoch, "epoch_batch": s.epoch_batch, "steps_per_epoch": self.steps_per_epoch,
                     "total_steps": self.total_steps, "world_size": self.world,
                     "global_batch": self.config.batch_size, "metrics_rows": self.logger.num_rows,
                     "evaluated_at": s.evaluated_at, "window_sums": s.window_sums, "window_steps": s.window_steps,
                     "scaler": self.scaler.state_dict() if self.scaler is not None else None}
            try:
                save_checkpoint(self.checkpoint_stem, model_state_for_checkpoint(self.module), self.optimizer,
                                self.scheduler, config=(self.config_for_checkpoint
                                                        if self.config_for_checkpoint is not None else self.config),
                                step=current_step, extra=extra, model_spec=self.model_spec, rng_states=rng_states)
            except PointliftError as error:  # a full or read-only disk: every process stops with it
                if self.world == 1:
                    raise
                failure = str(error)
        failure = dist_utils.broadcast_object(failure)
        if failure is not None:
            raise PointliftError(failure if self.is_main else f"process 0 could not save: {failure}")
        self.checkpointed_at = current_step

    def log(self, row: dict) -> None:
        self.history.append(row)
        if self.logger is not None:
            self.logger.log(row)

    def flush_window(self, elapsed: float) -> dict:
        """The log row of the steps since the last one: scalar means over all ranks, lr, throughput."""
        s = self.state
        keys = sorted(s.window_sums)
        sums = torch.tensor([s.window_sums[k] for k in keys], dtype=torch.float64, device=self.device)
        means = dist_utils.all_reduce_mean(sums / max(1, s.window_steps)).tolist()
        row = {"step": s.step, "epoch": s.epoch, "lr": self.scheduler.get_last_lr()[0]}
        row.update(dict(zip(keys, means)))
        row["samples_per_s"] = s.window_steps * self.config.batch_size / max(elapsed, 1e-9)
        s.window_sums, s.window_steps = {}, 0
        return row

    def evaluate(self, current_epoch: int) -> None:
        """`eval_fn(module, epoch)` on the main process, its results logged as `eval/<key>`."""
        if self.eval_fn is not None:
            if self.is_main:
                self.module.eval()
                with torch.no_grad():
                    results = self.eval_fn(self.module, current_epoch) or {}
                self.module.train()
                self.log({"step": self.state.step, "epoch": current_epoch,
                          **{f"eval/{k}": (v.item() if hasattr(v, "item") else v) for k, v in results.items()}})
            dist_utils.barrier()
        self.state.evaluated_at = self.state.step

    # ------------------------------------------------------------------------------------- the loop

    def more_to_do(self) -> bool:
        """Epochs bound the run unless max_steps is set (skipped batches count)."""
        config, s = self.config, self.state
        return s.step < self.total_steps and (config.max_steps is not None or s.epoch < config.epochs)

    def epoch_loader(self) -> DataLoader:
        """This rank's not yet drawn batches of the current epoch, as (epoch, index) keys of `SampleStreams`.

        One DataLoader serves every epoch (its sampler is refilled here), so its workers persist: an epoch's
        first batch does not wait for a new worker, and what a dataset keeps per sample (PPKT's pairs) lasts.
        """
        config, s = self.config, self.state
        indices = epoch_indices(self.num_samples, s.epoch, config.seed, self.rank, self.world)
        remaining = indices[s.epoch_batch * self.per_rank: self.steps_per_epoch * self.per_rank]
        if self.loader is None:
            # the generator only seeds the workers (samples draw from their own streams) and keeps DataLoader
            # from drawing that seed from the global stream the model's dropout uses
            self.loader = DataLoader(self.samples, batch_size=self.per_rank, sampler=self.epoch_keys, drop_last=True,
                                     collate_fn=self.collate_fn, num_workers=config.num_workers,
                                     persistent_workers=config.num_workers > 0, pin_memory=self.device.type == "cuda",
                                     worker_init_fn=seed_worker,
                                     generator=make_generator(derive_seed(config.seed, s.epoch, s.epoch_batch,
                                                                          self.rank)))
        self.epoch_keys.keys = [(s.epoch, index) for index in remaining]
        return self.loader

    def train_step(self, batch) -> bool:
        """One batch: forward, the non-finite checks, the update; False when the epoch loop must stop."""
        s, device = self.state, self.device
        s.epoch_batch += 1
        batch = move_to_device(batch, device, non_blocking=device.type == "cuda")
        with autocast(device, self.amp_dtype):
            outputs = self.model(batch)
        if not isinstance(outputs, dict) or "loss" not in outputs:
            raise TypeError("model(batch) must return a dict with a scalar 'loss'")
        loss = outputs["loss"]
        if not dist_utils.all_true(bool(torch.isfinite(loss.detach()).all()), device):
            return self.skip_batch()
        self.nonfinite_in_a_row = 0
        self.optimizer_step(loss)
        s.step += 1
        if not self.state_is_finite(f"after step {s.step}"):
            return False  # never logged as progress, never checkpointed
        return self.after_step(outputs)

    def skip_batch(self) -> bool:
        """A non-finite loss: no update; False once `max_nonfinite` came in a row or the state broke."""
        s, config = self.state, self.config
        self.nonfinite_in_a_row += 1
        self.optimizer.zero_grad(set_to_none=True)
        if self.is_main:
            warnings.warn(f"non-finite loss at epoch {s.epoch}, batch {s.epoch_batch} (after step {s.step}): "
                          f"update skipped ({self.nonfinite_in_a_row}/{config.max_nonfinite} in a row)",
                          RuntimeWarning)
        if self.nonfinite_in_a_row >= config.max_nonfinite:
            self.stop_reason = "nonfinite"
            self.stop_detail = f"{self.nonfinite_in_a_row} non-finite losses in a row after step {s.step}"
            return False
        return self.state_is_finite(f"after a skipped batch at step {s.step}")  # e.g. BN statistics

    def optimizer_step(self, loss: torch.Tensor) -> None:
        """Backward (scaled under fp16), optional clipping, optimiser step, zero_grad, scheduler step."""
        config, optimizer = self.config, self.optimizer
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if config.grad_clip is not None:
                self.scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(self.trainable, config.grad_clip)
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(self.trainable, config.grad_clip)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    def after_step(self, outputs: dict) -> bool:
        """Accumulate, log every `log_every`, save every `checkpoint_every`; False when the run stops here."""
        s, config = self.state, self.config
        for key, value in _scalars(outputs).items():
            s.window_sums[key] = s.window_sums.get(key, 0.0) + value.item()
        s.window_steps += 1
        self.bar.update(1)
        if s.step % config.log_every == 0 or s.step == self.total_steps:
            now = time.perf_counter()
            row = self.flush_window(now - self.window_start)
            self.window_start = now
            self.log(row)
            self.bar.set_postfix(loss=f"{row.get('loss', float('nan')):.4g}",
                                 samples_s=f"{row['samples_per_s']:.1f}")
        if config.checkpoint_every and s.step % config.checkpoint_every == 0:
            self.save(s.step)
            if self.stop_reason != "completed":
                return False
        if self.interrupt_after_step is not None and s.step >= self.interrupt_after_step:
            self.stop_reason = "interrupted"
            return False
        return s.step < self.total_steps  # max_steps reached mid-epoch: stop

    def finish(self) -> None:
        """A completed run ends with its last log row, evaluation and checkpoint (each unless already done)."""
        s = self.state
        if s.window_steps:  # steps since the last log row (skipped batches can shift the last one)
            self.log(self.flush_window(time.perf_counter() - self.window_start))
        if s.evaluated_at != s.step:
            self.evaluate(s.epoch)
        if self.checkpointed_at != s.step:
            self.save(s.step)

    def run(self) -> TrainResult:
        from pointlift.progress import bar

        s = self.state
        self.bar = bar(total=self.total_steps, initial=s.step, wanted=self.progress and self.is_main, desc="train")
        self.window_start = time.perf_counter()
        self.model.train()
        try:
            while self.more_to_do() and self.stop_reason == "completed":
                for batch in self.epoch_loader():
                    if not self.train_step(batch):
                        break
                if self.stop_reason == "completed" and s.epoch_batch >= self.steps_per_epoch:
                    s.epoch, s.epoch_batch = s.epoch + 1, 0
                    self.evaluate(s.epoch - 1)
            if self.stop_reason == "completed":
                self.finish()
        except RuntimeError as error:
            if dist_utils.is_collective_failure(error):
                raise dist_utils.collective_failure(error) from None
            raise
        finally:  # also on errors: the bar ends its line before the CLI prints the error
            self.loader = None  # its workers end with it
            self.bar.close()
            if self.logger is not None:
                self.logger.close()
        return self.result()

    def result(self) -> TrainResult:
        """The run's TrainResult; raises TrainingStopped (carrying it) when non-finite values ended the run."""
        tensor_path = checkpoint_files(self.checkpoint_stem)[0]
        s = self.state
        result = TrainResult(history=self.history, step=s.step,
                             checkpoint_path=tensor_path if tensor_path.exists() else None,
                             stopped_early=self.stop_reason != "completed", stop_reason=self.stop_reason,
                             epoch=s.epoch)
        if self.stop_reason == "nonfinite":
            kept = (f"the last finite checkpoint (step {self.checkpointed_at}) is kept at {tensor_path}"
                    if self.checkpointed_at >= 0 and tensor_path.exists() else "no checkpoint was written")
            raise TrainingStopped(f"training stopped: {self.stop_detail}; {kept}", result)
        return result


def train(model: nn.Module, dataset, config: TrainConfig, run_dir: str | Path, *,
          collate_fn: Callable | None = None, resume: bool = False, device: str | torch.device | None = None,
          progress: bool = True, eval_fn: Callable[[nn.Module, int], dict] | None = None,
          config_for_checkpoint: Any = None, model_spec: dict | None = None,
          interrupt_after_step: int | None = None) -> TrainResult:
    """Train `model` on `dataset` (map-style) with `config`; see the module docstring.

    Writes `run_dir/metrics.csv`, `run_dir/checkpoints/last.{safetensors,json}` (every
    `checkpoint_every` steps and at the end) and TensorBoard logs when available.
    `resume=True` continues exactly from `last`. `eval_fn(model, epoch) -> dict` runs on the main
    process after each epoch (and at the end). `interrupt_after_step=N` returns right after global
    step N without a final checkpoint, as a killed process would (used to test resuming).
    """
    return Trainer(model, dataset, config, run_dir, collate_fn=collate_fn, resume=resume, device=device,
                   progress=progress, eval_fn=eval_fn, config_for_checkpoint=config_for_checkpoint,
                   model_spec=model_spec, interrupt_after_step=interrupt_after_step).run()
