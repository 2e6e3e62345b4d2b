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


def _existing_path(text: str) -> Path:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text}: no such file or directory")
    return path


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _add_data_options(parser, normalize: bool = True) -> None:
    """How files and shape sets become network input (defaults: the checkpoint's point count)."""
    from pointlift.data.shape_sets import FORMATS, SCANOBJECTNN_CHOICES

    parser.add_argument("--format", choices=["auto", *FORMATS], default=None, help="shape-set layout (default auto)")
    parser.add_argument("--num-points", type=_positive_int, default=None,
                        help="points per shape (default: what the checkpoint was trained with)")
    parser.add_argument("--variant", choices=list(SCANOBJECTNN_CHOICES), default=None, help="ScanObjectNN file")
    if normalize:
        parser.add_argument("--normalize", choices=["unit_sphere", "none"], default=None,
                            help="per-shape normalisation of files and shape sets (default unit_sphere)")


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
    env["git_commit"] = _git_commit()
    return env


def _git_commit() -> str | None:
    """The commit of the checkout this code runs from (None outside a git checkout), "+dirty" when edited:
    a figure can then be traced to the code that produced it."""
    import subprocess

    source = Path(__file__).resolve().parent
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


def _run_one_bench(name: str, preset: str, out_dir: Path, resume: bool = False) -> dict:
    from pointlift.bench import load_benchmark

    run = load_benchmark(name)
    start = time.perf_counter()
    result = run(preset, out_dir, resume=True) if resume else run(preset, out_dir)
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

    import importlib

    names = list(BENCHMARKS) if args.name == "all" else [args.name]
    if args.resume and names != ["image2point"]:
        raise PointliftError(f"bench {args.name}: --resume is only for image2point (its long presets keep a "
                             "checkpoint per run)")
    for name in names:  # a preset one benchmark lacks (cpu-full is image2point's) is a usage error, not a KeyError
        module = importlib.import_module(BENCHMARKS[name])
        presets = getattr(module, "SETTINGS", getattr(module, "PRESETS", None))
        if presets is not None and args.preset not in presets:
            raise PointliftError(f"bench {name}: no preset {args.preset!r}; it has {', '.join(presets)}")
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
        record = _run_one_bench(args.name, args.preset, out_dir, resume=args.resume)
    _write_json_atomic(out, record)
    print(json.dumps(record["metrics"], indent=2))
    return 0


def _data_overrides(args) -> dict:
    return {key: value for key, value in (("format", args.format), ("variant", args.variant),
                                          ("normalize", getattr(args, "normalize", None))) if value is not None}


def _cmd_embed(args) -> int:
    from dataclasses import replace

    from pointlift.data.shape_sets import ShapeSetConfig
    from pointlift.engine.checkpoint import read_checkpoint_meta
    from pointlift.tasks.embed import checkpoint_num_points, embed_file, resolve_checkpoint

    meta = read_checkpoint_meta(resolve_checkpoint(args.checkpoint))
    data = ShapeSetConfig(num_points=args.num_points or checkpoint_num_points(meta), **_data_overrides(args))
    if args.columns is not None:
        data = replace(data, columns=args.columns)
    features = embed_file(args.checkpoint, args.points, args.out, batch_size=args.batch_size, device=args.device,
                          data=data, split=args.split)
    print(f"embed: {features.shape[0]} rows x {features.shape[1]} features -> {args.out}")
    return 0


def _cmd_inflate(args) -> int:
    from pointlift.methods.image2point import inflate_command

    inflate_command(
        teacher=args.teacher, weights=args.weights, mode=args.mode, axis=args.axis, out=args.out,
        design=args.design,
    )
    return 0


def _cmd_finetune(args) -> int:
    if args.method == "image2point":
        from pointlift.methods.image2point import finetune_command
    elif args.method == "segmentation":
        from pointlift.tasks.segmentation import finetune_command
    else:
        from pointlift.methods.i2p_mae import finetune_command

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
    if args.task == "ppkt":
        from pointlift.methods.ppkt import eval_command
        from pointlift.tasks.embed import resolve_checkpoint

        eval_command(resolve_checkpoint(args.checkpoint), args.frames, args.out)
        return 0
    if args.task == "segmentation":
        from pointlift.tasks.segmentation import eval_command

        eval_command(args.checkpoint, args.data, args.out, predictions_dir=args.predictions)
        return 0
    from pointlift.tasks.evaluate import describe, evaluate_fewshot, evaluate_svm, write_json

    common = dict(num_points=args.num_points, fmt=args.format, variant=args.variant,
                  compare_untrained=args.compare_untrained, batch_size=args.batch_size, device=args.device,
                  seed=args.seed)
    if args.task == "svm":
        record = evaluate_svm(args.checkpoint, args.data, folds=args.cv_folds, **common)
    else:
        record = evaluate_fewshot(args.checkpoint, args.data, way=args.way, shot=args.shot, folds=args.folds,
                                  test_per_class=args.test_per_class, **common)
    if args.out is not None:
        write_json(args.out, record)
    print(describe(record) + (f" -> {args.out}" if args.out is not None else ""))
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

    p = sub.add_parser("quickstart", help="run all three methods and a segmentation demo briefly on embedded synthetic data")
    p.add_argument("--out", type=Path, default=None, help="run directory (default runs/quickstart-<time>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_quickstart)

    p = sub.add_parser("bench", help="run a benchmark and write its figures as JSON")
    p.add_argument("name", choices=[*BENCHMARKS, "all"])
    p.add_argument("--preset", choices=PRESETS, default="smoke")
    p.add_argument("--out", type=Path, required=True, help="output JSON file")
    p.add_argument("--resume", action="store_true",
                   help="image2point: continue each run of an earlier call with the same --out from its last "
                        "checkpoint (finished runs are re-scored, unfinished ones continue)")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("embed", help="one global feature row per point set (file, folder, npz or shape set)")
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint (.safetensors + .json) or run dir")
    p.add_argument("--points", type=_existing_path, required=True,
                   help="npz with `points` (N,P,3), a point file, a folder of point files, or a shape set")
    p.add_argument("--out", type=Path, required=True, help="output .npy (N,F); rows named in <out>.json")
    p.add_argument("--split", choices=["train", "test", "all"], default="all", help="shape sets: which split")
    _add_data_options(p)
    p.add_argument("--columns", type=int, default=None, help="float32 values per point of raw .bin files")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.set_defaults(func=_cmd_embed)

    p = sub.add_parser("inflate", help="inflate a 2D ConvNet into a 3D sparse ConvNet (Image2Point)")
    p.add_argument("--teacher", required=True, help="timm model name, e.g. mobilenetv2_100")
    p.add_argument("--weights", type=_existing_file, default=None, help="local .safetensors/.pth")
    p.add_argument("--mode", choices=["copy", "center", "average"], default="copy")
    p.add_argument("--axis", choices=["z-axis", "y-axis", "x-axis"], default="z-axis",
                   help="released Image2Point axis option (z-axis = released default)")
    p.add_argument("--design", choices=["released", "imagenet-stem"], default="released")
    p.add_argument("--out", type=Path, required=True, help="output checkpoint path")
    p.set_defaults(func=_cmd_inflate)

    p = sub.add_parser("finetune", help="fine-tune a 3D network (shape classification or scene segmentation)")
    p.add_argument("method", choices=["image2point", "i2p-mae", "segmentation"])
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

    p = sub.add_parser("eval", help="evaluate a checkpoint: ppkt retrieval, segmentation, linear SVM or few-shot")
    tasks = p.add_subparsers(dest="task", required=True, parser_class=_Parser)
    q = tasks.add_parser("ppkt", help="PPKT: point-to-pixel retrieval on held-out RGB-D frames")
    q.add_argument("--checkpoint", type=Path, required=True)
    q.add_argument("--frames", type=_existing_dir, required=True, help="RGB-D directory")
    q.add_argument("--out", type=Path, required=True, help="output JSON")
    q.set_defaults(func=_cmd_eval)
    q = tasks.add_parser("segmentation", help="scene segmentation: mIoU, per-class IoU, accuracy on held-out scans")
    q.add_argument("--checkpoint", type=Path, required=True)
    q.add_argument("--data", type=_existing_dir, required=True,
                   help="a directory of scans (ScanNet, SemanticKITTI or S3DIS layout)")
    q.add_argument("--predictions", type=Path, default=None, help="write a PLY per scan here")
    q.add_argument("--out", type=Path, required=True, help="output JSON")
    q.set_defaults(func=_cmd_eval)
    for task, text in (("svm", "linear SVM on frozen features (C by cross-validation on train)"),
                       ("fewshot", "N-way K-shot linear SVM on frozen features, mean ± std over folds")):
        q = tasks.add_parser(task, help=text)
        q.add_argument("--checkpoint", type=Path, required=True, help="any method's checkpoint, or its run dir")
        q.add_argument("--data", type=_existing_path, required=True,
                       help="a shape set (path, layout detected) or a ShapeSetConfig .yaml")
        q.add_argument("--out", type=Path, default=None, help="output JSON")
        _add_data_options(q, normalize=False)
        q.add_argument("--compare-untrained", action="store_true",
                       help="also probe the same architecture freshly initialised")
        q.add_argument("--batch-size", type=int, default=32)
        q.add_argument("--device", default=None)
        q.add_argument("--seed", type=int, default=0)
        if task == "svm":
            q.add_argument("--cv-folds", type=int, default=5, help="cross-validation folds for C on train")
        else:
            q.add_argument("--way", type=int, default=5)
            q.add_argument("--shot", type=int, default=10)
            q.add_argument("--folds", type=int, default=10)
            q.add_argument("--test-per-class", type=int, default=20, help="query shapes per class and fold")
        q.set_defaults(func=_cmd_eval)
    return parser


def _one_line(message) -> str:
    """Error texts from parsers (YAML, HDF5) can span lines; the contract is one line."""
    return " ".join(str(message).split())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PointliftError as error:
        print(f"pointlift: error: {_one_line(error)}", file=sys.stderr)
        return int(getattr(error, "exit_code", EXIT_USAGE))  # 3: a run stopped on non-finite values
    except OSError as error:  # read-only or full disk, permissions, missing files: one line, exit 2
        where = f"{error.filename}: " if error.filename else ""
        print(f"pointlift: error: {where}{_one_line(error.strerror or error)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("pointlift: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
