"""The `pointlift` command line.

Every subcommand is a thin layer over the library: it parses arguments, calls one function, and
turns the project's errors into one line on stderr with exit code 2 (no traceback).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

from pointlift import __version__
from pointlift.errors import PointliftError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr and exit code 2."""

    def error(self, message: str):  # noqa: D401 - argparse hook
        self.exit(EXIT_USAGE, f"pointlift: error: {message} (see `{self.prog} --help`)\n")


def _existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    return path


def _existing_dir(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: no such directory")
    return path


# --------------------------------------------------------------------------------------- commands


def _cmd_quickstart(args) -> int:
    from pointlift.quickstart import run_quickstart

    run_quickstart(out_dir=args.out, progress=not args.no_progress)
    return 0


def environment_summary() -> dict:
    """What a benchmark figure was measured on."""
    import torch

    env = {
        "pointlift": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
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
    return env


def _finite_or_none(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _run_one_bench(name: str, preset: str, out_dir: Path) -> dict:
    from pointlift.bench import load_benchmark

    run = load_benchmark(name)
    start = time.perf_counter()
    result = run(preset, out_dir)
    return {
        "name": name,
        "preset": preset,
        # A figure that could not be measured (e.g. spconv absent) is null: strict JSON has no NaN.
        "metrics": {key: _finite_or_none(value) for key, value in result.metrics.items()},
        "config": result.config,
        "env": environment_summary(),
        "seconds": round(time.perf_counter() - start, 3),
    }


def _cmd_bench(args) -> int:
    from pointlift.bench import BENCHMARKS

    out = Path(args.out)
    out_dir = out.with_suffix("")  # artefacts (plots, run directories) beside the JSON
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.name == "all":
        start = time.perf_counter()
        metrics, config = {}, {}
        for name in BENCHMARKS:
            part = _run_one_bench(name, args.preset, out_dir / name)
            metrics.update({f"{name}.{key}": value for key, value in part["metrics"].items()})
            config[name] = part["config"]
            print(f"[bench] {name}: {part['seconds']:.1f} s", file=sys.stderr)
        record = {
            "name": "all",
            "preset": args.preset,
            "metrics": metrics,
            "config": config,
            "env": environment_summary(),
            "seconds": round(time.perf_counter() - start, 3),
        }
    else:
        record = _run_one_bench(args.name, args.preset, out_dir)
    _write_json_atomic(out, record)
    print(json.dumps(record["metrics"], indent=2))
    return 0


def _cmd_embed(args) -> int:
    from pointlift.tasks.embed import embed_file

    embed_file(args.checkpoint, args.points, args.out, batch_size=args.batch_size, device=args.device)
    return 0


def _cmd_inflate(args) -> int:
    from pointlift.methods.image2point import inflate_command

    inflate_command(
        teacher=args.teacher, weights=args.weights, mode=args.mode, axis=args.axis, out=args.out
    )
    return 0


def _cmd_finetune(args) -> int:
    if args.method == "segmentation":
        from pointlift.tasks.segmentation import finetune_command
    else:
        from pointlift.methods.image2point import finetune_command

    finetune_command(args.config, resume=args.resume, run_dir=args.run_dir)
    return 0


def _cmd_pretrain(args) -> int:
    if args.method == "ppkt":
        from pointlift.methods.ppkt import pretrain_command
    else:
        from pointlift.methods.i2p_mae import pretrain_command
    pretrain_command(args.config, resume=args.resume, run_dir=args.run_dir)
    return 0


def _cmd_eval(args) -> int:
    from pointlift.errors import PointliftConfigError

    if args.method == "segmentation":
        from pointlift.tasks.segmentation import eval_command

        if args.data is None:
            raise PointliftConfigError("eval segmentation: --data DIR (the scans to score) is required")
        eval_command(args.checkpoint, args.data, args.out, predictions_dir=args.predictions)
        return 0
    from pointlift.methods.ppkt import eval_command

    if args.frames is None:
        raise PointliftConfigError("eval ppkt: --frames DIR (an RGB-D directory) is required")
    eval_command(args.checkpoint, args.frames, args.out)
    return 0


def _write_json_atomic(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str, allow_nan=False) + "\n")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    from pointlift.bench import BENCHMARKS, PRESETS

    parser = _Parser(prog="pointlift", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"pointlift {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("quickstart", help="run all three methods briefly on embedded synthetic data")
    p.add_argument("--out", type=Path, default=None, help="run directory (default runs/quickstart-<time>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_quickstart)

    p = sub.add_parser("bench", help="run a benchmark and write its figures as JSON")
    p.add_argument("name", choices=[*BENCHMARKS, "all"])
    p.add_argument("--preset", choices=PRESETS, default="smoke")
    p.add_argument("--out", type=Path, required=True, help="output JSON file")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("embed", help="one global feature row per point set of an npz")
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint (.safetensors + .json)")
    p.add_argument("--points", type=_existing_file, required=True, help="npz with key `points` (N,P,3)")
    p.add_argument("--out", type=Path, required=True, help="output .npy (N,F)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.set_defaults(func=_cmd_embed)

    p = sub.add_parser("inflate", help="inflate a 2D ConvNet into a 3D sparse ConvNet (Image2Point)")
    p.add_argument("--teacher", required=True, help="timm model name, e.g. mobilenetv2_100")
    p.add_argument("--weights", type=_existing_file, default=None, help="local .safetensors/.pth")
    p.add_argument("--mode", choices=["copy", "center", "average"], default="copy")
    p.add_argument("--axis", choices=["x", "y", "z"], default="z")
    p.add_argument("--out", type=Path, required=True, help="output checkpoint path")
    p.set_defaults(func=_cmd_inflate)

    p = sub.add_parser("finetune", help="fine-tune a 3D network")
    p.add_argument("method", choices=["image2point", "segmentation"])
    p.add_argument("--config", type=_existing_file, required=True)
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    p.add_argument("--run-dir", type=Path, default=None)
    p.set_defaults(func=_cmd_finetune)

    p = sub.add_parser("pretrain", help="pretrain a 3D network from a 2D teacher")
    p.add_argument("method", choices=["ppkt", "i2p-mae"])
    p.add_argument("--config", type=_existing_file, required=True)
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    p.add_argument("--run-dir", type=Path, default=None)
    p.set_defaults(func=_cmd_pretrain)

    p = sub.add_parser("eval", help="evaluate a pretrained or fine-tuned network")
    p.add_argument("method", choices=["ppkt", "segmentation"])
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--frames", type=_existing_dir, default=None, help="ppkt: RGB-D directory")
    p.add_argument("--data", type=_existing_dir, default=None,
                   help="segmentation: a directory of scans (ScanNet, SemanticKITTI or S3DIS layout)")
    p.add_argument("--predictions", type=Path, default=None, help="segmentation: write a PLY per scan here")
    p.add_argument("--out", type=Path, required=True, help="output JSON")
    p.set_defaults(func=_cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PointliftError as error:
        print(f"pointlift: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (FileNotFoundError, IsADirectoryError, PermissionError) as error:
        print(f"pointlift: error: {error.filename or ''}: {error.strerror or error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("pointlift: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
