"""The command-line contract: one-line errors with exit code 2, and the JSON a benchmark writes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pointlift.cli import main
from pointlift.commands.bench import SIMD_FLAGS, cpu_description
from pointlift.errors import PointliftDataError


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pointlift.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["bench", "nonexistent", "--out", "x.json"], "invalid choice"),
        (["bench", "sparse", "--preset", "huge", "--out", "x.json"], "invalid choice"),
        (["embed", "--checkpoint", "c", "--points", "missing.npz", "--out", "f.npy"], "missing.npz"),
        (["pretrain", "ppkt", "--config", "missing.yaml"], "missing.yaml"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(tmp_path, args, needle):
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert needle in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "content, problem",
    [
        (dict(points=np.zeros((2, 5, 4), np.float32)), "shape"),
        (dict(points=np.full((2, 5, 3), np.nan, np.float32)), "NaN"),
        (dict(other=np.zeros((2, 5, 3), np.float32)), "no key 'points'"),
        (None, "npz"),
    ],
)
def test_embed_rejects_bad_point_files(tmp_path, capsys, content, problem):
    from pointlift.features.embed import read_point_sets

    path = tmp_path / "bad.npz"
    if content is None:
        path.write_bytes(b"PK\x03\x04 truncated")
    else:
        np.savez(path, **content)
    with pytest.raises(PointliftDataError) as info:
        read_point_sets(path)
    assert "bad.npz" in str(info.value) and problem in str(info.value)
    # The CLI turns the same error into one line and exit code 2 (the checkpoint is read first,
    # so give it a missing one and check that it is named).
    code = main(["embed", "--checkpoint", str(tmp_path / "none"), "--points", str(path), "--out", str(tmp_path / "f.npy")])
    assert code == 2
    assert "none" in capsys.readouterr().err


def test_bench_writes_the_documented_json(tmp_path, shared):
    shared("data/7scenes-redkitchen")
    out = tmp_path / "sparse.json"
    result = run_cli("bench", "sparse", "--preset", "smoke", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    record = json.loads(out.read_text())  # strict JSON: json.loads would accept NaN, so check below
    assert set(record) == {"name", "preset", "metrics", "config", "env", "seconds"}
    assert record["name"] == "sparse" and record["preset"] == "smoke"
    assert "NaN" not in out.read_text()
    for key in ("parity_max_abs_err", "unet_fwd_bwd_s_pointlift", "unet_fwd_bwd_s_spconv", "ratio_vs_spconv", "peak_mem_mb",
                "parity_compiled_max_abs_err", "compiled_ratio_vs_spconv"):
        assert key in record["metrics"]
        assert record["metrics"][key] is None or isinstance(record["metrics"][key], float)
    assert record["metrics"]["unet_fwd_bwd_s_pointlift"] > 0
    if record["config"]["compiled"]:  # the compiled kernels built here: timed beside the pure backend
        assert record["metrics"]["fwd_bwd_s_compiled"] > 0 and record["metrics"]["compiled_ratio_vs_pointlift"] > 0
        assert record["metrics"]["parity_compiled_max_abs_err"] < 1e-3
    assert record["env"]["torch"] and record["seconds"] > 0
    commit = record["env"]["git_commit"]  # the code that measured it (None outside a git checkout)
    assert commit is None or re.fullmatch(r"[0-9a-f]{12}(\+dirty)?", commit), commit
    cpu = record["env"]["cpu"]  # what tells this machine from another one of the same model name
    if Path("/proc/cpuinfo").exists():
        assert cpu["model_name"] == record["env"]["cpu_model"] and isinstance(cpu["family"], int), cpu
        assert cpu["torch_capability"] and set(cpu["simd"]) <= set(SIMD_FLAGS)


def test_cpu_description_reads_the_generation_a_vm_model_name_hides():
    block = ("processor\t: {n}\nvendor_id\t: AuthenticAMD\ncpu family\t: 23\nmodel\t\t: 1\n"
             "model name\t: AMD EPYC\nstepping\t: 2\nflags\t\t: fpu sse avx fma avx2 sha_ni\n")
    text = "\n".join(block.format(n=n) for n in range(2))
    cpu = cpu_description(text)
    assert (cpu["model_name"], cpu["vendor"], cpu["family"], cpu["model"], cpu["stepping"]) == (
        "AMD EPYC", "AuthenticAMD", 23, 1, 2)
    assert cpu["simd"] == ["avx", "avx2", "fma"]  # in SIMD_FLAGS' order; sha_ni is not a product unit
    zen4 = cpu_description(text.replace("cpu family\t: 23", "cpu family\t: 25").replace("avx2", "avx2 avx512f"))
    assert zen4["family"] == 25 and "avx512f" in zen4["simd"]
    assert cpu_description("processor\t: 0\n") is None  # no model name: nothing to describe


def test_embed_cli_gives_one_row_per_point_set(tmp_path):
    """A real (tiny, 3D-only) I2P-MAE checkpoint through `pointlift embed` equals embedding in Python."""
    import torch

    from pointlift.data.synthetic import make_shapes
    from pointlift.engine.config import OptimConfig, TrainConfig
    from pointlift.methods.i2p_mae.config import DataConfig, I2PMAEConfig, I2PMAEExperiment
    from pointlift.methods.i2p_mae.embedder import build_embedder
    from pointlift.methods.i2p_mae.pretrain import pretrain
    from pointlift.models.point_m2ae.config import PointM2AEConfig

    config = PointM2AEConfig(num_points=64, num_centers=(16, 8, 4), group_sizes=(4, 4, 2),
                             encoder_dims=(16, 32, 48), encoder_depths=(1, 1, 1), num_heads=2, embed_hidden=8,
                             decoder_dims=(48, 32), decoder_depths=(1, 1), drop_path=0.0)
    points, _, _ = make_shapes(2, num_points=64, seed=1)
    experiment = I2PMAEExperiment(
        method=I2PMAEConfig(model=config, guided_masking=False, feature_target=False),
        data=DataConfig(format="synthetic", cache_dir=str(tmp_path / "cache")),
        train=TrainConfig(epochs=1, batch_size=8, checkpoint_every=0, optim=OptimConfig(lr=1e-3)),
        device="cpu")
    _, result, _ = pretrain(experiment, tmp_path / "run", progress=False, points=points)
    np.savez(tmp_path / "sets.npz", points=points[:5] * 3.0)
    out = tmp_path / "feats.npy"
    assert main(["embed", "--checkpoint", str(result.checkpoint_path), "--points", str(tmp_path / "sets.npz"),
                 "--out", str(out), "--batch-size", "2", "--device", "cpu"]) == 0
    features = np.load(out)
    from pointlift.engine.checkpoint import load_checkpoint

    state, meta = load_checkpoint(result.checkpoint_path)
    model = build_embedder(meta["model_spec"]["config"])
    model.load_state_dict(state)
    expected = model.eval().embed(torch.from_numpy(points[:5] * 3.0)).detach().numpy()
    assert features.shape == (5, expected.shape[1])
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-5)


def test_bench_resume_is_refused_where_runs_keep_no_checkpoints(tmp_path, capsys):
    code = main(["bench", "sparse", "--preset", "smoke", "--out", str(tmp_path / "s.json"), "--resume"])
    assert code == 2
    assert "--resume is only for image2point" in capsys.readouterr().err


def test_bench_preset_a_benchmark_lacks(tmp_path, capsys):
    """A named benchmark without the preset is refused in one line (exit 2); `all` runs those that have it."""
    import argparse

    from pointlift.commands.bench import _check_arguments
    from pointlift.registry import BENCHMARKS

    code = main(["bench", "image2point-fewshot", "--preset", "cpu", "--out", str(tmp_path / "s.json")])
    assert code == 2 and "bench image2point-fewshot: no preset 'cpu'; it has smoke, cpu-long" in capsys.readouterr().err
    args = argparse.Namespace(name="all", preset="cpu-long", resume=False)
    assert _check_arguments(args, list(BENCHMARKS)) == ["image2point-fewshot", "i2p-mae-budget", "segmentation"]
    assert "i2p-mae, image2point, ppkt, sparse: no preset 'cpu-long', not run" in capsys.readouterr().err
    assert _check_arguments(argparse.Namespace(name="all", preset="smoke", resume=False),
                            list(BENCHMARKS)) == list(BENCHMARKS)


def test_no_progress_on_every_command_and_no_bars_in_logs(tmp_path, capsys):
    """Issue 29: `--no-progress` is accepted by every command; with stderr not a terminal (a log) there are
    no carriage-return frames even without it, while a forced terminal gets a bar."""
    import subprocess
    import sys

    from pointlift import progress
    from pointlift.cli import build_parser

    def leaves(parser, path=()):
        import argparse

        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            yield path, parser
        for action in subs:
            for name, child in action.choices.items():
                yield from leaves(child, (*path, name))

    commands = list(leaves(build_parser()))
    assert len(commands) >= 12
    for path, parser in commands:
        assert "--no-progress" in parser._option_string_actions, path
    import run_configs

    config = run_configs.write(run_configs.ppkt_config(tmp_path), tmp_path / "ppkt.yaml")  # cache, train, retrieval
    out = subprocess.run([sys.executable, "-m", "pointlift.cli", "pretrain", "ppkt", "--config", str(config)],
                         capture_output=True, text=True, timeout=600, env={**__import__("os").environ,
                                                                           "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ppkt" in out.stdout and "\r" not in out.stderr and "it/s" not in out.stderr
    # the same run with the switch forced on (as on a terminal) draws the training bar: the quiet log above
    # is the switch's doing
    from pointlift.commands.common import train_method
    from pointlift.registry import trainer

    progress.set_enabled(True)
    try:
        capsys.readouterr()
        train_method(trainer("pretrain", "ppkt"), config, run_dir=tmp_path / "forced")
        drawn = capsys.readouterr().err
        assert "\r" in drawn and "train" in drawn
        progress.set_enabled(False)
        assert progress.bar(range(3), desc="x").disable
    finally:
        progress.set_enabled(None)


def test_sparse_backend_on_every_command_and_a_backend_that_cannot_run_is_one_line(tmp_path):
    import argparse
    import os

    from pointlift.cli import SPARSE_BACKENDS, build_parser
    from pointlift.sparse import BACKENDS

    assert set(SPARSE_BACKENDS) == set(BACKENDS)

    def leaves(parser):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            yield parser
        for action in subs:
            for child in action.choices.values():
                yield from leaves(child)

    assert all("--sparse-backend" in p._option_string_actions for p in leaves(build_parser()))
    # the compiled kernels with no compiler (an empty kernel cache, so nothing built earlier is loaded)
    env = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"), "POINTLIFT_KERNEL_CACHE": str(tmp_path / "k")}
    result = subprocess.run([sys.executable, "-m", "pointlift.cli", "bench", "sparse", "--preset", "smoke",
                             "--out", str(tmp_path / "s.json"), "--sparse-backend", "compiled"],
                            capture_output=True, text=True, cwd=tmp_path, env=env)
    lines = [line for line in result.stderr.splitlines() if line.strip() and "UserWarning" not in line
             and "cpp_extension" not in line and "warnings.warn" not in line]
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and any("C++ compiler" in line for line in lines), result.stderr[-3000:]
    assert not (tmp_path / "s.json").exists()
