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
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from pointlift.engine import distributed as dist_utils
from pointlift.engine.checkpoint import (checkpoint_files, clean_stale_files, load_checkpoint, load_model_state,
                                         model_state_for_checkpoint, save_checkpoint)
from pointlift.engine.config import TrainConfig
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
    extra: dict = field(default_factory=dict)


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
    flags = torch.stack([torch.isfinite(v).all() for v in state.values()])
    if bool(flags.all()):  # one device sync in the common case
        return []
    return [k for k, ok in zip(state, flags.tolist()) if not ok]


def move_to_device(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Move tensors, also inside dicts, lists and tuples (named tuples included), to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, dict):
        moved = {k: move_to_device(v, device, non_blocking) for k, v in batch.items()}
        return moved if type(batch) is dict else type(batch)(moved)
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(move_to_device(v, device, non_blocking) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device, non_blocking) for v in batch)
    return batch


def epoch_indices(num_samples: int, epoch: int, seed: int, rank: int = 0, world_size: int = 1) -> list[int]:
    """This process's sample indices for `epoch`: a (seed, epoch)-shuffled, equal-size shard."""
    sampler = DistributedSampler(range(num_samples), num_replicas=world_size, rank=rank, shuffle=True,
                                 seed=seed, drop_last=True)
    sampler.set_epoch(epoch)
    return list(sampler)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _amp_setup(config: TrainConfig, device: torch.device):
    """(autocast dtype or None, GradScaler or None): fp16 + scaler on CUDA, bf16 on CPU."""
    if not config.amp:
        return None, None
    if device.type == "cuda":
        return torch.float16, torch.amp.GradScaler("cuda")
    try:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            pass
        return torch.bfloat16, None
    except (RuntimeError, ValueError):
        warnings.warn(f"amp requested but autocast is not supported on {device}; training in float32")
        return None, None


def _scalars(outputs: dict) -> dict[str, torch.Tensor]:
    """The loggable entries of a model's output: numbers and one-element tensors."""
    found = {}
    for key, value in outputs.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            found[key] = value.detach().float().reshape(())
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            found[key] = torch.tensor(float(value))
    return found


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
    from tqdm.auto import tqdm

    context = dist_utils.init_distributed(device)
    device, rank, world, is_main = context.device, context.rank, context.world_size, context.is_main
    run_dir = Path(run_dir)
    checkpoint_stem = last_checkpoint(run_dir)
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        clean_stale_files(checkpoint_stem)  # temporaries of a save that a crash interrupted

    if config.batch_size % world:
        raise PointliftConfigError(f"batch_size: {config.batch_size} is not divisible by the {world} processes")
    per_rank = config.batch_size // world
    num_samples = len(dataset)
    samples = SampleStreams(dataset, config.seed)  # sample i of epoch e: the same draws on any rank
    steps_per_epoch = len(epoch_indices(num_samples, 0, config.seed, rank, world)) // per_rank
    if steps_per_epoch == 0:
        raise PointliftConfigError(f"batch_size: {config.batch_size} is larger than the dataset "
                                   f"({num_samples} samples): no full batch to train on")
    total_steps = config.max_steps if config.max_steps is not None else config.epochs * steps_per_epoch

    seed_everything(config.seed + rank)
    model.to(device)
    module = model
    if world > 1:
        convert_sync_batchnorm(module)  # BN statistics over the global batch, as in one process
        model = nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=bool(getattr(module, "ddp_find_unused_parameters", False)))
    optimizer = build_optimizer(module, config.optim)
    scheduler = build_scheduler(optimizer, config.optim, total_steps, steps_per_epoch)
    amp_dtype, scaler = _amp_setup(config, device)
    trainable = [p for p in module.parameters() if p.requires_grad]

    step, epoch, epoch_batch, metrics_rows, evaluated_at = 0, 0, 0, None, -1
    window_sums: dict[str, float] = {}
    window_steps = 0
    rng_to_restore = None
    if resume:
        state, meta = load_checkpoint(checkpoint_stem)
        load_model_state(module, state, checkpoint_files(checkpoint_stem)[0])
        extra = meta.get("extra", {})
        if extra.get("global_batch") not in (None, config.batch_size):
            raise PointliftConfigError(f"batch_size: {config.batch_size} differs from the resumed run's "
                                       f"{extra['global_batch']}; resuming would change the data order")
        if meta.get("optimizer") is not None:
            optimizer.load_state_dict(meta["optimizer"])
        if meta.get("scheduler") is not None:
            scheduler.load_state_dict(meta["scheduler"])
        if scaler is not None and extra.get("scaler"):
            scaler.load_state_dict(extra["scaler"])
        step = int(meta["step"])
        epoch, epoch_batch = int(extra.get("epoch", 0)), int(extra.get("epoch_batch", 0))
        metrics_rows = extra.get("metrics_rows")
        evaluated_at = int(extra.get("evaluated_at", -1))
        window_sums = dict(extra.get("window_sums", {}))
        window_steps = int(extra.get("window_steps", 0))
        rng_states = meta.get("rng")
        if isinstance(rng_states, list) and rng_states:
            if len(rng_states) != world:
                warnings.warn(f"resuming with {world} processes from a checkpoint of {len(rng_states)}: "
                              "random states cannot be restored exactly")
            rng_to_restore = rng_states[rank % len(rng_states)]

    logger = None
    if is_main:
        logger = MetricsLogger(run_dir / "metrics.csv", keep_rows=metrics_rows if resume else None,
                               tensorboard_dir=run_dir / "tensorboard")
    history: list[dict] = list(logger.rows) if logger is not None else []
    checkpointed_at = step if resume else -1

    stop_reason, stop_detail = "completed", ""
    nonfinite_in_a_row = 0

    def state_is_finite(after: str) -> bool:
        nonlocal stop_reason, stop_detail
        broken = nonfinite_tensors(module)
        if dist_utils.all_true(not broken, device):
            return True
        stop_reason = "nonfinite"
        stop_detail = (f"non-finite parameters or buffers {after}"
                       + (f" ({len(broken)} tensors, e.g. {', '.join(broken[:3])})" if broken else " on another rank"))
        return False

    def save(current_step: int) -> None:
        nonlocal checkpointed_at
        if not state_is_finite(f"before saving step {current_step}"):  # e.g. after an eval that touched BN
            return
        rng_states = dist_utils.all_gather_object(get_rng_state())
        failure = None
        if is_main:
            extra = {"epoch": epoch, "epoch_batch": epoch_batch, "steps_per_epoch": steps_per_epoch,
                     "total_steps": total_steps, "world_size": world, "global_batch": config.batch_size,
                     "metrics_rows": logger.num_rows, "evaluated_at": evaluated_at,
                     "window_sums": window_sums, "window_steps": window_steps,
                     "scaler": scaler.state_dict() if scaler is not None else None}
            try:
                save_checkpoint(checkpoint_stem, model_state_for_checkpoint(module), optimizer, scheduler,
                                config=config_for_checkpoint if config_for_checkpoint is not None else config,
                                step=current_step, extra=extra, model_spec=model_spec, rng_states=rng_states)
            except PointliftError as error:  # a full or read-only disk: every process stops with it
                if world == 1:
                    raise
                failure = str(error)
        failure = dist_utils.broadcast_object(failure)
        if failure is not None:
            raise PointliftError(failure if is_main else f"process 0 could not save: {failure}")
        checkpointed_at = current_step

    def log(row: dict) -> None:
        history.append(row)
        if logger is not None:
            logger.log(row)

    def flush_window(current_step: int, elapsed: float) -> dict:
        nonlocal window_sums, window_steps
        keys = sorted(window_sums)
        sums = torch.tensor([window_sums[k] for k in keys], dtype=torch.float64, device=device)
        means = dist_utils.all_reduce_mean(sums / max(1, window_steps)).tolist()
        row = {"step": current_step, "epoch": epoch, "lr": scheduler.get_last_lr()[0]}
        row.update(dict(zip(keys, means)))
        row["samples_per_s"] = window_steps * config.batch_size / max(elapsed, 1e-9)
        window_sums, window_steps = {}, 0
        return row

    def evaluate(current_epoch: int) -> None:
        nonlocal evaluated_at
        if eval_fn is not None:
            if is_main:
                module.eval()
                with torch.no_grad():
                    results = eval_fn(module, current_epoch) or {}
                module.train()
                log({"step": step, "epoch": current_epoch,
                     **{f"eval/{k}": (v.item() if hasattr(v, "item") else v) for k, v in results.items()}})
            dist_utils.barrier()
        evaluated_at = step

    if rng_to_restore is not None:
        set_rng_state(rng_to_restore)  # last, so nothing above consumes randomness after it

    bar = tqdm(total=total_steps, initial=step, disable=not (progress and is_main), dynamic_ncols=True,
               desc="train")
    window_start = time.perf_counter()
    model.train()
    def more_to_do() -> bool:  # epochs bound the run unless max_steps is set (skipped batches count)
        return step < total_steps and (config.max_steps is not None or epoch < config.epochs)

    try:
        while more_to_do() and stop_reason == "completed":
            indices = epoch_indices(num_samples, epoch, config.seed, rank, world)
            remaining = indices[epoch_batch * per_rank: steps_per_epoch * per_rank]
            samples.set_epoch(epoch)
            loader = DataLoader(samples, batch_size=per_rank, sampler=remaining, drop_last=True,
                                collate_fn=collate_fn, num_workers=config.num_workers,
                                pin_memory=device.type == "cuda", worker_init_fn=seed_worker,
                                generator=make_generator(derive_seed(config.seed, epoch, epoch_batch, rank)))
            for batch in loader:
                epoch_batch += 1
                batch = move_to_device(batch, device, non_blocking=device.type == "cuda")
                with _autocast(device, amp_dtype):
                    outputs = model(batch)
                if not isinstance(outputs, dict) or "loss" not in outputs:
                    raise TypeError("model(batch) must return a dict with a scalar 'loss'")
                loss = outputs["loss"]
                finite = dist_utils.all_true(bool(torch.isfinite(loss.detach()).all()), device)
                if not finite:
                    nonfinite_in_a_row += 1
                    optimizer.zero_grad(set_to_none=True)
                    if is_main:
                        warnings.warn(f"non-finite loss at epoch {epoch}, batch {epoch_batch} (after step {step}): "
                                      f"update skipped ({nonfinite_in_a_row}/{config.max_nonfinite} in a row)",
                                      RuntimeWarning)
                    if nonfinite_in_a_row >= config.max_nonfinite:
                        stop_reason = "nonfinite"
                        stop_detail = f"{nonfinite_in_a_row} non-finite losses in a row after step {step}"
                        break
                    if not state_is_finite(f"after a skipped batch at step {step}"):  # e.g. BN statistics
                        break
                    continue
                nonfinite_in_a_row = 0
                if scaler is not None:
                    scaler.scale(loss).backward()
                    if config.grad_clip is not None:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    if config.grad_clip is not None:
                        torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                step += 1
                if not state_is_finite(f"after step {step}"):
                    break  # never logged as progress, never checkpointed

                for key, value in _scalars(outputs).items():
                    window_sums[key] = window_sums.get(key, 0.0) + value.item()
                window_steps += 1
                bar.update(1)
                if step % config.log_every == 0 or step == total_steps:
                    now = time.perf_counter()
                    row = flush_window(step, now - window_start)
                    window_start = now
                    log(row)
                    bar.set_postfix(loss=f"{row.get('loss', float('nan')):.4g}",
                                    samples_s=f"{row['samples_per_s']:.1f}")
                if config.checkpoint_every and step % config.checkpoint_every == 0:
                    save(step)
                    if stop_reason != "completed":
                        break
                if interrupt_after_step is not None and step >= interrupt_after_step:
                    stop_reason = "interrupted"
                    break
                if step >= total_steps:
                    break  # max_steps reached mid-epoch
            if stop_reason == "completed" and epoch_batch >= steps_per_epoch:
                epoch, epoch_batch = epoch + 1, 0
                evaluate(epoch - 1)

        if stop_reason == "completed":
            if window_steps:  # steps since the last log row (skipped batches can shift the last one)
                log(flush_window(step, time.perf_counter() - window_start))
            if evaluated_at != step:
                evaluate(epoch)
            if checkpointed_at != step:
                save(step)
    except RuntimeError as error:
        if dist_utils.is_collective_failure(error):
            raise dist_utils.collective_failure(error) from None
        raise
    finally:  # also on errors: the bar ends its line before the CLI prints the error
        bar.close()
        if logger is not None:
            logger.close()
    tensor_path = checkpoint_files(checkpoint_stem)[0]
    result = TrainResult(history=history, step=step, checkpoint_path=tensor_path if tensor_path.exists() else None,
                         stopped_early=stop_reason != "completed", stop_reason=stop_reason, epoch=epoch)
    if stop_reason == "nonfinite":
        kept = (f"the last finite checkpoint (step {checkpointed_at}) is kept at {tensor_path}"
                if checkpointed_at >= 0 and tensor_path.exists() else "no checkpoint was written")
        raise TrainingStopped(f"training stopped: {stop_detail}; {kept}", result)
    return result
