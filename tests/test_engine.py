"""Engine tests: config validation, optimiser/schedule, checkpoints (exact, atomic), the loop
(loss falls, exact resume, non-finite handling, frozen-teacher exclusion)."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

from pointlift.engine import checkpoint as checkpoint_module
from pointlift.engine.checkpoint import checkpoint_files, load_checkpoint, save_checkpoint
from pointlift.engine.config import OptimConfig, TrainConfig, config_to_dict, load_config, save_config
from pointlift.engine.device import move_to_device
from pointlift.engine.metrics import read_metrics
from pointlift.engine.optim import build_optimizer, build_scheduler, parameter_groups
from pointlift.engine.rundir import create_run_dir
from pointlift.engine.seed import get_rng_state, seed_everything, set_rng_state
from pointlift.engine.trainer import TrainingStopped, epoch_indices, nonfinite_tensors, train
from pointlift.errors import PointliftConfigError, PointliftDataError

# ---------------------------------------------------------------------------------------------
# config


def write(path, text):
    path.write_text(text)
    return path


def test_config_loads_nested_yaml_and_round_trips(tmp_path):
    path = write(tmp_path / "exp.yaml", "epochs: 3\nmax_steps: null\ngrad_clip: 1\n"
                                        "optim:\n  name: sgd\n  lr: 0.1\n  betas: [0.8, 0.9]\n")
    config = load_config(path, TrainConfig)
    assert config.epochs == 3 and config.max_steps is None
    assert config.grad_clip == 1.0 and isinstance(config.grad_clip, float)  # int accepted as float
    assert config.optim.name == "sgd" and config.optim.betas == (0.8, 0.9)  # list -> tuple
    save_config(config, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml", TrainConfig) == config
    assert load_config(config_to_dict(config), TrainConfig) == config


@pytest.mark.parametrize("text, key, problem", [
    ("epoch: 3\n", "epoch", "unknown key"),
    ("optim:\n  lr: 0.1\n  momentun: 0.5\n", "optim.momentun", "unknown key"),
    ("epochs: 2.5\n", "epochs", "expected int"),
    ("epochs: true\n", "epochs", "expected int"),
    ("amp: 1\n", "amp", "expected bool"),
    ("optim:\n  lr: fast\n", "optim.lr", "expected float"),
    ("optim:\n  name: adam\n", "optim.name", "must be one of"),
    ("optim:\n  schedule: linear\n", "optim.schedule", "must be one of"),
    ("optim:\n  betas: [0.9]\n", "optim.betas", "expected 2 items"),
    ("optim:\n  betas: [0.9, x]\n", "optim.betas[1]", "expected float"),
    ("grad_clip: big\n", "grad_clip", "expected float"),
    ("optim:\n  lr: -1.0\n", "optim.lr", "must be > 0"),
    ("max_steps: 0\n", "max_steps", "must be >= 1"),
    ("optim:\n  warmup_steps: 5\n  warmup_epochs: 1.0\n", "optim.warmup_epochs", "not both"),
    ("optim: 3\n", "optim", "expected a mapping"),
])
def test_config_errors_name_file_and_dotted_key(tmp_path, text, key, problem):
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(PointliftConfigError) as error:
        load_config(path, TrainConfig)
    message = str(error.value)
    assert message.startswith(f"{path}: {key}: "), message
    assert problem in message


def test_config_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(PointliftConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml", TrainConfig)
    with pytest.raises(PointliftConfigError, match="not valid YAML"):
        load_config(write(tmp_path / "broken.yaml", "epochs: [1\n"), TrainConfig)


# ---------------------------------------------------------------------------------------------
# optimiser and schedule


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 1, bias=False)


def test_no_weight_decay_on_biases_and_norms():
    net = TinyNet()
    groups = parameter_groups(net, 0.1)
    names = {id(p): n for n, p in net.named_parameters()}
    decayed = {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {"linear.weight", "head.weight"}
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))


def test_warmup_cosine_schedule_matches_formula():
    config = OptimConfig(lr=0.5, warmup_steps=4, min_lr=0.05)
    net = TinyNet()
    optimizer = build_optimizer(net, config)
    scheduler = build_scheduler(optimizer, config, total_steps=20, steps_per_epoch=10)
    seen = []
    for _ in range(24):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    for step, lr in enumerate(seen):
        if step < 4:
            expected = 0.5 * (step + 1) / 4
        else:
            progress = min(1.0, (step - 4) / 16)
            expected = 0.05 + 0.45 * 0.5 * (1 + math.cos(math.pi * progress))
        assert lr == pytest.approx(expected, rel=1e-9), step
    sgd = build_optimizer(net, OptimConfig(name="sgd", lr=0.1, schedule="constant", warmup_epochs=0.5))
    constant = build_scheduler(sgd, OptimConfig(name="sgd", lr=0.1, schedule="constant", warmup_epochs=0.5),
                               total_steps=20, steps_per_epoch=4)  # warm-up 2 steps
    lrs = []
    for _ in range(5):
        lrs.append(sgd.param_groups[0]["lr"])
        sgd.step()
        constant.step()
    assert lrs == pytest.approx([0.05, 0.1, 0.1, 0.1, 0.1])


# ---------------------------------------------------------------------------------------------
# checkpoints


def trained_net_and_optimizer(steps=3):
    torch.manual_seed(0)
    net = TinyNet()
    config = OptimConfig(lr=0.01, warmup_steps=2)
    optimizer = build_optimizer(net, config)
    scheduler = build_scheduler(optimizer, config, total_steps=10, steps_per_epoch=5)
    for _ in range(steps):
        loss = net.head(net.norm(net.linear(torch.randn(8, 3)))).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
    return net, optimizer, scheduler, config


def test_checkpoint_round_trip_is_exact(tmp_path):
    net, optimizer, scheduler, config = trained_net_and_optimizer()
    seed_everything(5)
    path = save_checkpoint(tmp_path / "ck", net.state_dict(), optimizer, scheduler, config=config, step=3,
                           extra={"epoch": 1}, model_spec={"name": "tiny"})
    assert path == tmp_path / "ck.safetensors" and (tmp_path / "ck.json").is_file()
    expected_next = torch.rand(3)
    state, meta = load_checkpoint(tmp_path / "ck.safetensors")
    assert meta["step"] == 3 and meta["extra"] == {"epoch": 1} and meta["model_spec"] == {"name": "tiny"}
    assert meta["config"]["lr"] == 0.01 and meta["pointlift_version"]
    for key, value in net.state_dict().items():
        assert torch.equal(state[key], value), key

    clone, clone_opt, clone_sched, _ = trained_net_and_optimizer(steps=0)
    clone.load_state_dict(state)
    clone_opt.load_state_dict(meta["optimizer"])
    clone_sched.load_state_dict(meta["scheduler"])
    set_rng_state(meta["rng"])
    assert torch.equal(torch.rand(3), expected_next)  # RNG restored
    x = torch.randn(8, 3)
    for model, opt, sched in ((net, optimizer, scheduler), (clone, clone_opt, clone_sched)):
        model.head(model.norm(model.linear(x))).pow(2).mean().backward()
        opt.step()
        sched.step()
    for (key, a), b in zip(net.state_dict().items(), clone.state_dict().values()):
        assert torch.equal(a, b), key
    assert clone_sched.get_last_lr() == scheduler.get_last_lr()


def test_checkpoint_crash_between_writes_keeps_previous(tmp_path, monkeypatch):
    net, optimizer, scheduler, _ = trained_net_and_optimizer()
    save_checkpoint(tmp_path / "last", net.state_dict(), optimizer, scheduler, step=1)
    old = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    real_replace = checkpoint_module._replace
    # Crash before moving the old tensors aside, before moving the new tensors in, before the
    # sidecar, then again before the sidecar while the debris of the earlier crashes lies around.
    for crash_at in ("last.prev.safetensors", "last.safetensors", "last.json", "last.json"):
        def flaky(src, dst):
            if dst.name == crash_at:
                raise OSError("simulated crash")
            real_replace(src, dst)

        monkeypatch.setattr(checkpoint_module, "_replace", flaky)
        with pytest.raises(PointliftDataError, match="simulated crash.*previous checkpoint is kept"):
            save_checkpoint(tmp_path / "last", net.state_dict(), optimizer, scheduler, step=2)
        monkeypatch.setattr(checkpoint_module, "_replace", real_replace)
        state, meta = load_checkpoint(tmp_path / "last")
        assert meta["step"] == 1, crash_at
        for key, value in old.items():
            assert torch.equal(state[key], value), (crash_at, key)
    save_checkpoint(tmp_path / "last", net.state_dict(), optimizer, scheduler, step=2)
    state, meta = load_checkpoint(tmp_path / "last")
    assert meta["step"] == 2 and torch.equal(state["linear.weight"], net.linear.weight.detach())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.json", "last.safetensors"]


def test_checkpoint_missing_or_corrupt_raises_data_error(tmp_path):
    net, optimizer, _, _ = trained_net_and_optimizer(steps=1)
    with pytest.raises(PointliftDataError, match="sidecar not found"):
        load_checkpoint(tmp_path / "none")
    tensors, sidecar = checkpoint_files(tmp_path / "ck")
    save_checkpoint(tmp_path / "ck", net.state_dict(), optimizer, step=1)
    data = tensors.read_bytes()
    tensors.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(PointliftDataError) as error:
        load_checkpoint(tmp_path / "ck")
    assert "ck.safetensors" in str(error.value)
    tensors.unlink()
    with pytest.raises(PointliftDataError, match="tensor file missing"):
        load_checkpoint(tmp_path / "ck")
    sidecar.write_text("{not json")
    with pytest.raises(PointliftDataError, match="corrupt checkpoint sidecar"):
        load_checkpoint(tmp_path / "ck")


# ---------------------------------------------------------------------------------------------
# the training loop


class RegressionData(torch.utils.data.Dataset):
    """y = x @ w + b with fixed w, b; items are dicts to exercise batch moving."""

    def __init__(self, n=48, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.7

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


class Regressor(nn.Module):
    """MLP with dropout (so resuming must restore the RNG) and an optional frozen 'teacher'."""

    def __init__(self, nan_when=None, teacher=False):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 1))
        self.nan_when = nan_when  # callable(call_index) -> bool
        self.calls = 0
        if teacher:
            self.teacher = nn.Linear(4, 4).requires_grad_(False)
            self.checkpoint_exclude = ("teacher.",)

    def forward(self, batch):
        self.calls += 1
        x = batch["x"]
        if hasattr(self, "teacher"):
            x = x + 0.0 * self.teacher(x)
        prediction = self.net(x).squeeze(-1)
        loss = (prediction - batch["y"]).pow(2).mean()
        if self.nan_when is not None and self.nan_when(self.calls):
            loss = loss * float("nan")
        return {"loss": loss, "abs_error": (prediction - batch["y"]).abs().mean()}


def make_config(**overrides):
    optim = OptimConfig(lr=0.02, weight_decay=0.01, warmup_steps=2)
    values = dict(epochs=3, batch_size=8, seed=3, checkpoint_every=4, log_every=2, optim=optim)
    values.update(overrides)
    return TrainConfig(**values)


def fresh_model(**kwargs):
    torch.manual_seed(11)
    return Regressor(**kwargs)


def test_loss_falls_and_logs(tmp_path):
    model = fresh_model()
    evaluated = []

    def eval_fn(m, epoch):
        assert not m.training
        evaluated.append(epoch)
        return {"mse": float(m.net(torch.zeros(1, 4)).item())}

    result = train(model, RegressionData(), make_config(epochs=8, checkpoint_every=0), tmp_path / "run",
                   progress=False, eval_fn=eval_fn, model_spec={"name": "regressor"})
    losses = [row["loss"] for row in result.history if "loss" in row]
    assert result.step == 8 * 6 and not result.stopped_early
    assert losses[-1] < 0.2 * losses[0], losses
    assert evaluated == list(range(8))
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert len(rows) == len(result.history)
    assert [r["step"] for r in rows if "eval/mse" in r] == [6 * (e + 1) for e in range(8)]
    assert all(r["samples_per_s"] > 0 for r in rows if "loss" in r)
    state, meta = load_checkpoint(result.checkpoint_path)
    assert meta["step"] == 48 and meta["model_spec"] == {"name": "regressor"}
    assert torch.equal(state["net.0.weight"], model.net[0].weight.detach())


def test_resume_mid_epoch_matches_uninterrupted_run(tmp_path):
    config = make_config()  # 6 steps/epoch, 18 steps, checkpoints at 4, 8, 12, 16
    straight = fresh_model()
    full = train(straight, RegressionData(), config, tmp_path / "a", progress=False)

    interrupted = fresh_model()
    first = train(interrupted, RegressionData(), config, tmp_path / "b", progress=False, interrupt_after_step=10)
    assert first.stopped_early and first.step == 10 and first.stop_reason == "interrupted"
    assert json.loads((tmp_path / "b/checkpoints/last.json").read_text())["step"] == 8
    resumed_model = fresh_model()  # a new process: weights come from the checkpoint
    torch.manual_seed(999)  # and the RNG state must come from it too
    second = train(resumed_model, RegressionData(), config, tmp_path / "b", progress=False, resume=True)
    assert second.step == full.step == 18
    for (key, a), b in zip(straight.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(a, b), key
    assert [r["loss"] for r in second.history] == pytest.approx([r["loss"] for r in full.history], abs=1e-7)
    assert len(read_metrics(tmp_path / "b/metrics.csv")) == len(full.history)


def test_checkpoint_exclude_skips_frozen_teacher(tmp_path):
    model = fresh_model(teacher=True)
    result = train(model, RegressionData(n=16), make_config(epochs=1), tmp_path / "run", progress=False)
    state, _ = load_checkpoint(result.checkpoint_path)
    assert state and not any(k.startswith("teacher.") for k in state)
    assert "net.0.weight" in state
    again = fresh_model(teacher=True)
    with torch.no_grad():
        again.teacher.weight.fill_(7.0)
    train(again, RegressionData(n=16), make_config(epochs=1), tmp_path / "run", progress=False, resume=True)
    assert torch.equal(again.net[0].weight, model.net[0].weight)
    assert torch.all(again.teacher.weight == 7.0)  # untouched by loading


def test_nonfinite_losses_are_skipped(tmp_path):
    model = fresh_model(nan_when=lambda call: call % 5 == 0)
    with pytest.warns(RuntimeWarning, match="non-finite loss"):
        result = train(model, RegressionData(), make_config(epochs=4), tmp_path / "run", progress=False)
    skipped = 24 // 5  # 4 epochs of 6 batches, every 5th forward is NaN
    assert result.step == 24 - skipped and not result.stopped_early and result.epoch == 4
    assert model.calls == 24
    assert all(torch.isfinite(p).all() for p in model.parameters())
    losses = [row["loss"] for row in result.history]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


def test_persistent_nonfinite_stops_and_keeps_last_good_checkpoint(tmp_path):
    config = make_config(epochs=4, max_nonfinite=3)
    reference = fresh_model()
    train(reference, RegressionData(), config, tmp_path / "ref", progress=False, interrupt_after_step=8)

    broken = fresh_model(nan_when=lambda call: call > 9)  # good for 9 steps, then NaN forever
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(TrainingStopped, match="3 non-finite losses in a row.*checkpoint \\(step 8\\)") as stop:
            train(broken, RegressionData(), config, tmp_path / "run", progress=False)
    result = stop.value.result
    assert result.stopped_early and result.stop_reason == "nonfinite" and result.step == 9
    assert broken.calls == 12
    state, meta = load_checkpoint(tmp_path / "run/checkpoints/last")
    assert meta["step"] == 8  # the last good checkpoint, not overwritten
    for key, value in reference.state_dict().items():
        assert torch.equal(state[key], value), key


# ---------------------------------------------------------------------------------------------
# helpers


def test_epoch_indices_shard_the_single_process_order():
    single = epoch_indices(21, epoch=2, seed=4)
    shards = [epoch_indices(21, epoch=2, seed=4, rank=r, world_size=2) for r in range(2)]
    assert sorted(single) == list(range(21))
    assert len(shards[0]) == len(shards[1]) == 10
    interleaved = [i for pair in zip(*shards) for i in pair]
    assert interleaved == single[:20]  # rank r's batch t of size b/2 is half of global batch t
    assert epoch_indices(21, epoch=3, seed=4) != single


def test_move_to_device_and_rng_state_round_trip():
    batch = {"a": torch.ones(2), "b": [torch.zeros(1), (torch.ones(1), "name")], "c": 3}
    moved = move_to_device(batch, torch.device("cpu"))
    assert torch.equal(moved["b"][1][0], torch.ones(1)) and moved["b"][1][1] == "name" and moved["c"] == 3
    import random

    import numpy as np
    state = get_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1))
    json.dumps(state)  # JSON-safe
    set_rng_state(state)
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(1), expected[2])


def test_create_run_dir_is_unique_and_saves_config(tmp_path):
    first = create_run_dir("ppkt", root=tmp_path, config=make_config())
    second = create_run_dir("ppkt", root=tmp_path)
    assert first != second and first.name.startswith("ppkt-") and second.is_dir()
    assert load_config(first / "config.yaml", TrainConfig) == make_config()


def test_cpu_amp_runs_forward_in_bfloat16_and_learns(tmp_path):
    model = fresh_model()
    dtypes = []
    model.net[0].register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    result = train(model, RegressionData(), make_config(epochs=4, amp=True, grad_clip=1.0), tmp_path / "run",
                   progress=False)
    assert set(dtypes) == {torch.bfloat16}
    assert model.net[0].weight.dtype == torch.float32  # master weights stay float32
    losses = [row["loss"] for row in result.history]
    assert losses[-1] < 0.5 * losses[0], losses


# ---------------------------------------------------------------------------------------------
# integrity, stale temporaries, non-finite state, init checkpoints


def test_checkpoint_refuses_flipped_bytes_and_edited_sidecars(tmp_path):
    net, optimizer, _, _ = trained_net_and_optimizer(steps=1)
    tensors, sidecar = checkpoint_files(tmp_path / "ck")
    save_checkpoint(tmp_path / "ck", net.state_dict(), optimizer, step=9, model_spec={"kind": "tiny"})
    original_tensors, original_sidecar = tensors.read_bytes(), sidecar.read_text()
    load_checkpoint(tmp_path / "ck")  # intact: loads

    data = bytearray(original_tensors)
    data[-64:] = b"\xff" * 64  # the last tensor's bytes (the header is intact, so safetensors loads it)
    tensors.write_bytes(bytes(data))
    with pytest.raises(PointliftDataError, match="content hash"):
        load_checkpoint(tmp_path / "ck")
    tensors.write_bytes(original_tensors)

    for edit in ({"step": 3}, {"model_spec": {"kind": "other"}}, {"model_keys": ["linear.weight"]}):
        meta = json.loads(original_sidecar)
        meta.update(edit)
        sidecar.write_text(json.dumps(meta, indent=1))
        with pytest.raises(PointliftDataError, match="sidecar"):
            load_checkpoint(tmp_path / "ck")
    sidecar.write_text(original_sidecar)
    _, meta = load_checkpoint(tmp_path / "ck")
    assert meta["step"] == 9


def test_stale_temporaries_are_removed_at_start_and_after_saves(tmp_path):
    model = fresh_model()
    train(model, RegressionData(), make_config(epochs=1), tmp_path / "run", progress=False)
    folder = tmp_path / "run" / "checkpoints"
    debris = [folder / "last.safetensors.tmp-123-abcdef01", folder / "last.json.tmp-123-abcdef01",
              folder / ".tmpAb12Cd", folder / "last.prev.safetensors"]
    for path in debris:
        path.write_bytes(b"x" * 100)
    keep = folder / "notes.txt"
    keep.write_text("mine")
    train(fresh_model(), RegressionData(), make_config(epochs=2), tmp_path / "run", progress=False, resume=True)
    assert sorted(p.name for p in folder.iterdir()) == ["last.json", "last.safetensors", "notes.txt"]
    for path in debris[:3]:  # and a save alone cleans up too
        path.write_bytes(b"x")
    net, optimizer, _, _ = trained_net_and_optimizer(steps=1)
    save_checkpoint(folder / "last", net.state_dict(), optimizer, step=1)
    assert sorted(p.name for p in folder.iterdir()) == ["last.json", "last.safetensors", "notes.txt"]


class ExplodingNorm(nn.Module):
    """BatchNorm whose running variance turns infinite at forward call `at` while the loss stays finite."""

    def __init__(self, at):
        super().__init__()
        self.linear = nn.Linear(4, 1)
        self.norm = nn.BatchNorm1d(4)
        self.at, self.calls = at, 0

    def forward(self, batch):
        self.calls += 1
        x = self.norm(batch["x"])
        if self.calls == self.at:
            broken = self.norm.running_var.clone()
            broken[0] = float("inf")
            self.norm.running_var = broken  # a new buffer: the graph keeps the old one
        return {"loss": (self.linear(x).squeeze(-1) - batch["y"]).pow(2).mean()}


def test_nonfinite_tensors_names_exactly_the_broken_tensors():
    """The fast test (a finite sum proves a tensor finite) must neither miss a NaN or inf nor flag finite
    tensors whose sum overflows."""
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2).to(torch.float64))
    assert nonfinite_tensors(model) == []
    with torch.no_grad():
        model[0].weight.fill_(3e38)  # finite, but its float32 sum is inf
        model[2].bias.fill_(1e308)  # finite float64, its sum as float32 is inf
    assert nonfinite_tensors(model) == []
    with torch.no_grad():
        model[0].bias[1] = float("nan")
        model[1].running_var[0] = float("-inf")
    assert nonfinite_tensors(model) == ["0.bias", "1.running_var"]


def test_nonfinite_buffers_stop_the_run_and_keep_a_finite_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = ExplodingNorm(at=6)
    with pytest.raises(TrainingStopped, match=r"non-finite parameters or buffers after step 6 .*norm.running_var"):
        train(model, RegressionData(), make_config(epochs=3, checkpoint_every=2), tmp_path / "run", progress=False)
    state, meta = load_checkpoint(tmp_path / "run" / "checkpoints" / "last")
    assert meta["step"] == 4
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_init_checkpoint_of_another_method_or_shape_is_refused(tmp_path):
    from pointlift.engine.checkpoint import load_init_checkpoint

    net, _, _, _ = trained_net_and_optimizer(steps=0)
    save_checkpoint(tmp_path / "mine", net.state_dict(), step=0, model_spec={"kind": "tiny", "config": {"w": 6}})
    save_checkpoint(tmp_path / "other", net.state_dict(), step=0, model_spec={"kind": "i2p_mae"})
    fresh, _, _, _ = trained_net_and_optimizer(steps=0)
    assert load_init_checkpoint(fresh, tmp_path / "mine", "tiny") == len(net.state_dict())
    with pytest.raises(PointliftDataError, match="'i2p_mae' checkpoint, but a 'tiny' model"):
        load_init_checkpoint(fresh, tmp_path / "other", "tiny")
    wider = nn.Module()
    wider.linear, wider.norm, wider.head = nn.Linear(3, 7), nn.LayerNorm(7), nn.Linear(7, 1, bias=False)
    with pytest.raises(PointliftDataError, match=r"linear.weight is \(4, 3\) in the checkpoint, \(7, 3\) in the"):
        load_init_checkpoint(wider, tmp_path / "mine", "tiny")
    new_head = nn.Module()
    new_head.linear, new_head.norm, new_head.head = nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 5, bias=False)
    assert load_init_checkpoint(new_head, tmp_path / "mine", "tiny", reinit=("head.",)) == len(net.state_dict()) - 1
    assert torch.equal(new_head.linear.weight, net.linear.weight)


SAVE_FOREVER = """
import sys, torch
from pointlift.engine.checkpoint import save_checkpoint
state = {"w": torch.zeros(5_000_000)}
step = 0
while True:
    step += 1
    state["w"][0] = step
    save_checkpoint(sys.argv[1], state, step=step)
"""


def test_kill_9_during_saves_leaves_a_loadable_checkpoint_and_debris_that_cleanup_removes(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from pointlift.engine.checkpoint import clean_stale_files

    stem = tmp_path / "last"
    worker = subprocess.Popen([sys.executable, "-c", SAVE_FOREVER, str(stem)],
                              env=dict(os.environ, OMP_NUM_THREADS="1"), stderr=subprocess.PIPE)
    debris = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and worker.poll() is None:
            names = {p.name for p in tmp_path.iterdir()}
            if "last.json" in names and any(".tmp" in n for n in names):  # mid-save, after a first save
                break
            time.sleep(0.005)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.communicate()
    debris = [p.name for p in tmp_path.iterdir() if p.name not in ("last.json", "last.safetensors")]
    assert debris, "the kill did not land during a save"
    state, meta = load_checkpoint(stem)  # whatever the moment, a complete checkpoint loads
    assert state["w"][0].item() == meta["step"]
    clean_stale_files(stem)
    left = sorted(p.name for p in tmp_path.iterdir())
    # `.prev` survives only where the kill fell between the two renames: the sidecar still needs it
    assert left in (["last.json", "last.safetensors"], ["last.json", "last.prev.safetensors", "last.safetensors"])
    state, meta = load_checkpoint(stem)
    assert state["w"][0].item() == meta["step"]


class WorkerTaggedData(RegressionData):
    """RegressionData with per-sample noise (drawn from the sample's stream), whose items say which process
    prepared them."""

    def __getitem__(self, i):
        item = super().__getitem__(i)
        return {"x": item["x"] + 0.1 * torch.randn(4), "y": item["y"], "pid": torch.tensor(os.getpid())}


class PidRecorder(Regressor):
    def __init__(self):
        super().__init__()
        self.pids = []

    def forward(self, batch):
        self.pids += batch["pid"].tolist()
        return super().forward(batch)


def test_one_worker_serves_every_epoch_and_the_run_is_the_one_without_workers(tmp_path):
    """The DataLoader (and its worker) lasts the whole run: the epoch travels with each index, so a kept
    worker draws each sample's own stream and the run ends where the run without workers ends."""
    runs = {}
    for workers in (0, 1):
        torch.manual_seed(11)
        model = PidRecorder()
        config = make_config(epochs=3, checkpoint_every=0, num_workers=workers)  # 6 steps per epoch
        train(model, WorkerTaggedData(), config, tmp_path / f"w{workers}", progress=False)
        runs[workers] = model
    assert set(runs[0].pids) == {os.getpid()}
    assert len(set(runs[1].pids)) == 1 and os.getpid() not in runs[1].pids  # one worker, all 3 epochs
    for (key, a), b in zip(runs[0].state_dict().items(), runs[1].state_dict().values()):
        assert torch.equal(a, b), key


_RESIDENT_AFTER_FREE = """
import torch
from pointlift.engine.allocator import keep_freed_memory
applied = keep_freed_memory()
def resident_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
block = torch.ones(6 << 20)  # 24 MiB, above glibc's default mmap threshold
held = resident_mb()
del block
print(applied, held - resident_mb())
"""


@pytest.mark.skipif(not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"),
                    reason="the thresholds are glibc's")
def test_freed_step_memory_stays_in_the_process_unless_opted_out():
    """A freed 24 MiB tensor stays resident (the next step reuses its pages without page faults); with
    POINTLIFT_KEEP_FREED_MEMORY=0 glibc's defaults give it back to the kernel."""
    def run(setting):
        env = {**os.environ, "POINTLIFT_KEEP_FREED_MEMORY": setting}
        out = subprocess.run([sys.executable, "-c", _RESIDENT_AFTER_FREE], env=env, capture_output=True, text=True,
                             check=True).stdout.split()
        return out[0] == "True", float(out[1])

    applied, released_mb = run("1")
    assert applied and released_mb < 4
    applied, released_mb = run("0")
    assert not applied and released_mb > 20
