"""The `pointlift` command line.

This module is the parser only: each subcommand dispatches to `pointlift.commands.<verb>.run(args)`,
a thin layer over the library. `main` turns the project's errors into one line on stderr with exit
code 2 (no traceback).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pointlift import __version__
from pointlift.commands import bench, config, embed, evaluate, finetune, inflate, pretrain, quickstart
from pointlift.errors import PointliftError

SPARSE_BACKENDS = ("pure", "compiled", "spconv")  # pointlift.sparse.BACKENDS, named here so that --help needs no torch

EXIT_USAGE = 2


# The names pointlift.registry defines (not imported here, so that the parser starts fast; a test holds
# them equal to the registry's).
PRETRAIN_METHODS = ("ppkt", "i2p-mae")
FINETUNE_METHODS = ("image2point", "i2p-mae", "segmentation")
BENCHMARK_NAMES = ("sparse", "image2point", "image2point-fewshot", "ppkt", "i2p-mae", "i2p-mae-budget", "segmentation")
CONFIG_KINDS = ("image2point", "ppkt", "i2p-mae-pretrain", "i2p-mae-finetune", "segmentation")


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr and exit code 2."""

    def error(self, message: str):  # noqa: D401 - argparse hook
        self.exit(EXIT_USAGE, f"pointlift: error: {message} (see `{self.prog} --help`)\n")


def _existing(test, what: str):
    """An argparse type: a Path that passes `test` (Path.is_file, is_dir, exists), else "TEXT: no such WHAT"."""

    def check(text: str) -> Path:
        path = Path(text)
        if not test(path):
            raise argparse.ArgumentTypeError(f"{text}: no such {what}")
        return path

    return check


_existing_file = _existing(Path.is_file, "file")
_existing_dir = _existing(Path.is_dir, "directory")
_existing_path = _existing(Path.exists, "file or directory")


def _int_at_least(minimum: int, maximum: int | None = None):
    """An argparse type: an integer >= `minimum` (and <= `maximum`), else one line naming the bound."""

    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum}, got {value}")
        return value

    return check


_positive_int = _int_at_least(1)


def _writable_out(text: str) -> Path:
    """An argparse type for --out: a path that can be written, checked before any work is done.

    The nearest existing ancestor must be a writable directory (a probe file is created and removed
    there); an ancestor that is a regular file, or the path being a directory, is named in one line."""
    import tempfile

    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: is a directory (give a file path)")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: {ancestor} is a file, not a directory")
    try:
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as error:
        raise argparse.ArgumentTypeError(f"{text}: cannot write in {ancestor} ({error.strerror or error})") from None
    return path


def _add_data_options(parser, normalize: bool = True) -> None:
    """How files and shape sets become network input (defaults: the checkpoint's point count)."""
    from pointlift.data.shape_sets import FORMATS, MAX_POINTS_PER_SHAPE, SCANOBJECTNN_CHOICES

    parser.add_argument("--format", choices=["auto", *FORMATS], default=None, help="shape-set layout (default auto)")
    parser.add_argument("--num-points", type=_int_at_least(1, MAX_POINTS_PER_SHAPE), default=None,
                        help="points per shape (default: what the checkpoint was trained with)")
    parser.add_argument("--variant", choices=list(SCANOBJECTNN_CHOICES), default=None, help="ScanObjectNN file")
    if normalize:
        parser.add_argument("--normalize", choices=["unit_sphere", "none"], default=None,
                            help="per-shape normalisation of files and shape sets (default unit_sphere)")


# ----------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pointlift", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"pointlift {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in (_add_quickstart, _add_bench, _add_embed, _add_inflate, _add_finetune, _add_pretrain, _add_eval,
                _add_config):
        add(sub)
    _add_common_options(parser)
    return parser


def _add_common_options(parser) -> None:
    """`--no-progress` and `--sparse-backend` on every command (on the commands themselves, so that they go
    after the command's name like its other options)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                _add_common_options(command)
            return
    if "--no-progress" not in parser._option_string_actions:
        parser.add_argument("--no-progress", action="store_true",
                            help="no progress bars (also off whenever stderr is not a terminal)")
    if "--sparse-backend" not in parser._option_string_actions:
        parser.add_argument("--sparse-backend", choices=list(SPARSE_BACKENDS), default=None,
                            help="who runs the sparse convolutions: pure (default, PyTorch only), compiled "
                                 "(pointlift's C++ CPU kernels, built on first use; needs g++ and ninja) or "
                                 "spconv (if installed)")


def _add_quickstart(sub) -> None:
    p = sub.add_parser("quickstart", help="run all three methods and a segmentation demo briefly on embedded synthetic data")
    p.add_argument("--out", type=Path, default=None, help="run directory (default runs/quickstart-<time>)")
    p.set_defaults(func=quickstart.run)


def _add_bench(sub) -> None:
    from pointlift.bench import PRESETS

    p = sub.add_parser("bench", help="run a benchmark and write its figures as JSON")
    p.add_argument("name", choices=[*BENCHMARK_NAMES, "all"])
    p.add_argument("--preset", choices=PRESETS, default="smoke")
    p.add_argument("--out", type=_writable_out, required=True, help="output JSON file")
    p.add_argument("--resume", action="store_true",
                   help="image2point: continue each run of an earlier call with the same --out from its last "
                        "checkpoint (finished runs are re-scored, unfinished ones continue)")
    p.set_defaults(func=bench.run)


def _add_embed(sub) -> None:
    p = sub.add_parser("embed", help="one global feature row per point set (file, folder, npz or shape set)")
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint (.safetensors + .json) or run dir")
    p.add_argument("--points", type=_existing_path, required=True,
                   help="npz with `points` (N,P,3), a point file, a folder of point files, or a shape set")
    p.add_argument("--out", type=_writable_out, required=True, help="output .npy (N,F); beside it <out>.json (e.g. feats.npy.json: each row's file, the checkpoint, "
                        "the settings) and, for labelled sets, feats.labels.npy")
    p.add_argument("--split", choices=["train", "test", "all"], default="all", help="shape sets: which split")
    _add_data_options(p)
    p.add_argument("--columns", type=int, default=None, help="float32 values per point of raw .bin files")
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.set_defaults(func=embed.run)


def _add_inflate(sub) -> None:
    p = sub.add_parser("inflate", help="inflate a 2D ConvNet into a 3D sparse ConvNet (Image2Point)")
    p.add_argument("--teacher", required=True, help="timm model name, e.g. mobilenetv2_100")
    p.add_argument("--weights", type=_existing_file, default=None, help="local .safetensors/.pth")
    p.add_argument("--mode", choices=["copy", "center", "average"], default="copy")
    p.add_argument("--axis", choices=["z-axis", "y-axis", "x-axis"], default="z-axis",
                   help="released Image2Point axis option (z-axis = released default)")
    p.add_argument("--design", choices=["released", "imagenet-stem"], default="released")
    p.add_argument("--out", type=_writable_out, required=True, help="output checkpoint path")
    p.set_defaults(func=inflate.run)


def _override(text: str) -> str:
    """An argparse type: a `key.sub=value` config override (the value is parsed as YAML when loading)."""
    key, equals, _ = text.partition("=")
    if not equals or not all(key.split(".")):
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. train.max_steps=4)")
    return text


def _add_run_options(p) -> None:
    """--config / --resume / --overwrite / --run-dir and KEY=VALUE overrides of every training command."""
    p.add_argument("--config", type=_existing_file, required=True,
                   help="YAML config (keys: docs/CONFIG.md); its input paths are relative to its folder")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")
    again.add_argument("--overwrite", action="store_true",
                       help="delete the run already in --run-dir (everything in that directory) and start afresh")
    p.add_argument("--run-dir", type=Path, default=None,
                   help="run directory (default <run_root>/<name>-<time>); one holding a run needs --resume or "
                        "--overwrite, and one run at a time may use it")
    p.add_argument("overrides", nargs="*", type=_override, metavar="KEY=VALUE",
                   help="set a config key, typed and checked like the file: train.max_steps=4 data.path=DIR "
                        "(paths relative to the current directory); keys: `pointlift config show`")


def _add_finetune(sub) -> None:
    p = sub.add_parser("finetune", help="fine-tune a 3D network (shape classification or scene segmentation)")
    p.add_argument("method", choices=FINETUNE_METHODS)
    _add_run_options(p)
    p.set_defaults(func=finetune.run)


def _add_pretrain(sub) -> None:
    p = sub.add_parser("pretrain", help="pretrain a 3D network from a 2D teacher")
    p.add_argument("method", choices=PRETRAIN_METHODS)
    _add_run_options(p)
    p.set_defaults(func=pretrain.run)


def _add_config(sub) -> None:
    p = sub.add_parser("config", help="the reference of every config key: type, default and meaning")
    actions = p.add_subparsers(dest="action", required=True, parser_class=_Parser)
    q = actions.add_parser("show", help="one training command's config keys (or, with --yaml, a default config)")
    q.add_argument("kind", choices=CONFIG_KINDS)
    q.add_argument("--yaml", action="store_true", help="print a full default config as YAML")
    q.set_defaults(func=config.run)
    q = actions.add_parser("docs", help="print docs/CONFIG.md (every kind's reference, as Markdown)")
    q.set_defaults(func=config.run)


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint: ppkt retrieval, segmentation, linear SVM or few-shot")
    tasks = p.add_subparsers(dest="task", required=True, parser_class=_Parser)
    q = tasks.add_parser("ppkt", help="PPKT: point-to-pixel retrieval on held-out RGB-D frames")
    q.add_argument("--checkpoint", type=Path, required=True)
    q.add_argument("--frames", type=_existing_dir, required=True, help="RGB-D directory")
    q.add_argument("--out", type=_writable_out, required=True, help="output JSON")
    q.set_defaults(func=evaluate.run)
    q = tasks.add_parser("segmentation", help="scene segmentation: mIoU, per-class IoU, accuracy on held-out scans")
    q.add_argument("--checkpoint", type=Path, required=True)
    q.add_argument("--data", type=_existing_dir, required=True,
                   help="a directory of scans (ScanNet, SemanticKITTI or S3DIS layout)")
    q.add_argument("--predictions", type=Path, default=None, help="write a PLY per scan here")
    q.add_argument("--out", type=_writable_out, required=True, help="output JSON")
    q.set_defaults(func=evaluate.run)
    for task, text in (("svm", "linear SVM on frozen features (C by cross-validation on train)"),
                       ("fewshot", "N-way K-shot linear SVM on frozen features, mean ± std over folds")):
        _add_probe(tasks.add_parser(task, help=text), task)


def _add_probe(q, task: str) -> None:
    """`eval svm` / `eval fewshot`: frozen-feature probes of any method's checkpoint."""
    q.add_argument("--checkpoint", type=Path, required=True, help="any method's checkpoint, or its run dir")
    q.add_argument("--data", type=_existing_path, required=True,
                   help="a shape set (path, layout detected) or a ShapeSetConfig .yaml")
    q.add_argument("--out", type=_writable_out, default=None, help="output JSON")
    _add_data_options(q, normalize=False)
    q.add_argument("--compare-untrained", action="store_true",
                   help="also probe the same architecture freshly initialised")
    q.add_argument("--batch-size", type=_positive_int, default=32)
    q.add_argument("--device", default=None)
    q.add_argument("--seed", type=_int_at_least(0, 2**32 - 1), default=0)
    if task == "svm":
        q.add_argument("--cv-folds", type=_int_at_least(2), default=5, help="cross-validation folds for C on train")
    else:
        q.add_argument("--way", type=_int_at_least(2), default=5)
        q.add_argument("--shot", type=_positive_int, default=10)
        q.add_argument("--folds", type=_int_at_least(1, 10_000), default=10)
        q.add_argument("--test-per-class", type=_positive_int, default=20, help="query shapes per class and fold")
    q.set_defaults(func=evaluate.run)


def _one_line(message) -> str:
    """Error texts from parsers (YAML, HDF5) can span lines; the contract is one line."""
    return " ".join(str(message).split())


def parse(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """parse_args, but KEY=VALUE overrides may also follow options (`--config C train.max_steps=4`):
    argparse leaves positionals after an option unparsed, so they are taken here."""
    args, extras = parser.parse_known_args(argv)
    if extras:
        unknown = extras if not hasattr(args, "overrides") else [e for e in extras if e.startswith("-")]
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        try:
            args.overrides = [*args.overrides, *map(_override, extras)]
        except argparse.ArgumentTypeError as error:
            parser.error(f"argument KEY=VALUE: {error}")
    return args


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings as one line in the project's voice, not Python's format with a source line."""
    return f"pointlift: warning: {_one_line(message)}\n"


def main(argv: list[str] | None = None) -> int:
    import warnings

    warnings.formatwarning = _format_warning
    parser = build_parser()
    args = parse(parser, argv)
    from pointlift import progress

    progress.set_enabled(False if getattr(args, "no_progress", False) else None)
    from pointlift.engine.allocator import keep_freed_memory

    keep_freed_memory()  # every step's tensors reuse the last step's pages (engine/allocator.py)
    try:
        if getattr(args, "sparse_backend", None):
            from pointlift.sparse import set_backend

            set_backend(args.sparse_backend)  # a backend that cannot run here: one line, exit 2
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
