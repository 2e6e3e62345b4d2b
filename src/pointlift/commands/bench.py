"""`pointlift bench NAME|all --preset P --out FILE.json`: run benchmarks, write their figures with the
environment they were measured on (versions, hardware, git commit)."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from pathlib import Path

from pointlift import __version__
from pointlift.errors import PointliftError


def environment_summary() -> dict:
    """What a benchmark figure was measured on."""
    import torch

    cpu = cpu_description()
    env = {
        "pointlift": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu["model_name"] if cpu else None,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        import timm

        env["timm"] = timm.__version__
    except ImportError:  # pragma: no cover - timm is a dependency
        pass
    env["git_commit"] = _git_commit()
    return env


# The SIMD extensions that decide how fast dense products run (FMA width, AVX-512, bf16/int8 units).
SIMD_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile")


def cpu_description(cpuinfo: str | None = None) -> dict | None:
    """What tells two CPUs apart (Linux /proc/cpuinfo, or its text; None where there is none).

    A VM's model name often hides the generation (two machines both read "AMD EPYC"); its family and
    model numbers and SIMD flags do not, and they decide how fast the matrix products of a step run.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    first = cpuinfo.strip().split("\n\n")[0]  # one processor's block; the others repeat it
    fields = {}
    for line in first.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    if "model name" not in fields:
        return None

    def number(key: str) -> int | None:
        return int(fields[key]) if fields.get(key, "").isdigit() else None

    import torch

    flags = set(fields.get("flags", "").split())
    return {"model_name": fields["model name"], "vendor": fields.get("vendor_id"), "family": number("cpu family"),
            "model": number("model"), "stepping": number("stepping"),
            "simd": [flag for flag in SIMD_FLAGS if flag in flags],
            "torch_capability": torch.backends.cpu.get_cpu_capability()}


def _git_commit() -> str | None:
    """The commit of the checkout this code runs from (None outside a git checkout), "+dirty" when the
    package's files are edited: a figure can then be traced to the code that produced it."""
    import subprocess

    source = Path(__file__).resolve().parents[1]  # the pointlift package: its files decide "+dirty"
    try:
        def git(*args):
            return subprocess.run(["git", *args], cwd=source, capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()

        commit = git("rev-parse", "--short=12", "HEAD")
        return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no", "--", ".") else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _finite_or_none(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _run_one(name: str, preset: str, out_dir: Path, resume: bool = False) -> dict:
    from pointlift.registry import BENCHMARKS

    run_benchmark = BENCHMARKS[name].run
    start = time.perf_counter()
    result = run_benchmark(preset, out_dir, resume=True) if resume else run_benchmark(preset, out_dir)
    return {
        "name": name,
        "preset": preset,
        # A figure that could not be measured (e.g. spconv absent) is null: strict JSON has no NaN.
        "metrics": {key: _finite_or_none(value) for key, value in result.metrics.items()},
        "config": result.config,
        "env": environment_summary(),
        "seconds": round(time.perf_counter() - start, 3),
    }


def _has_preset(name: str, preset: str) -> bool:
    from pointlift.registry import BENCHMARKS

    presets = getattr(BENCHMARKS[name], "PRESETS", None)  # the benchmark's table: preset name -> settings
    return presets is None or preset in presets


def _check_arguments(args, names: list[str]) -> list[str]:
    """The benchmarks to run. --resume and a preset the named benchmark lacks (cpu-full is image2point's) are
    usage errors, not KeyErrors; `all` runs every benchmark that has the preset and names the others."""
    from pointlift.registry import BENCHMARKS

    if args.resume and names != ["image2point"]:
        raise PointliftError(f"bench {args.name}: --resume is only for image2point (its long presets keep a "
                             "checkpoint per run)")
    runnable = [name for name in names if _has_preset(name, args.preset)]
    if args.name != "all" and not runnable:
        presets = BENCHMARKS[args.name].PRESETS
        raise PointliftError(f"bench {args.name}: no preset {args.preset!r}; it has {', '.join(presets)}")
    if not runnable:
        raise PointliftError(f"bench all: no benchmark has a preset {args.preset!r}")
    skipped = sorted(set(names) - set(runnable))
    if skipped:
        print(f"[bench] {', '.join(skipped)}: no preset {args.preset!r}, not run", file=sys.stderr)
    return runnable


def _run_all(names: list[str], preset: str, out_dir: Path) -> dict:
    """The named benchmarks in turn; one record whose metrics are named `<benchmark>.<metric>`."""
    start = time.perf_counter()
    metrics, config = {}, {}
    for name in names:
        part = _run_one(name, preset, out_dir / name)
        metrics.update({f"{name}.{key}": value for key, value in part["metrics"].items()})
        config[name] = part["config"]
        print(f"[bench] {name}: {part['seconds']:.1f} s", file=sys.stderr)
    return {
        "name": "all",
        "preset": preset,
        "metrics": metrics,
        "config": config,
        "env": environment_summary(),
        "seconds": round(time.perf_counter() - start, 3),
    }


def run(args) -> int:
    from pointlift.engine.rundir import write_json
    from pointlift.registry import BENCHMARKS

    names = _check_arguments(args, list(BENCHMARKS) if args.name == "all" else [args.name])
    out = Path(args.out)
    out_dir = out.with_suffix("")  # artefacts (plots, run directories) beside the JSON
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.name == "all":
        record = _run_all(names, args.preset, out_dir)
    else:
        record = _run_one(args.name, args.preset, out_dir, resume=args.resume)
    write_json(out, record, indent=2, default=str, allow_nan=False)  # atomic strict JSON (NaN refused)
    print(json.dumps(record["metrics"], indent=2))
    return 0
