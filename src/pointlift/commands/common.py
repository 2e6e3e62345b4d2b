"""What every training command does: load the config, check --resume, make the run dir, train, report."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

from pointlift.errors import PointliftConfigError

T = TypeVar("T")


@contextmanager
def prepare_run(config_path: str | Path | dict, config_class: type[T], resume: bool = False,
                run_dir: str | Path | None = None, *, overwrite: bool = False, name: str | None = None,
                root: str | Path | None = None, check: Callable[[T], None] | None = None,
                overrides: Sequence[str] = ()) -> Iterator[tuple[T, Path]]:
    """(config, run directory) for `pointlift pretrain|finetune METHOD --config FILE [--resume|--overwrite]
    [--run-dir DIR] [KEY=VALUE ...]`, held for the `with` block.

    In this order, so a bad file fails before anything is written: `config_path` (YAML file or dict) is
    loaded as `config_class` (every key checked); `resume` without `run_dir` is refused ("--resume needs
    --run-dir (the run to continue)"), since a fresh timestamped directory would have nothing to resume;
    `check(config)` raises on anything else that must fail before a directory exists (e.g. a wrong
    pretraining checkpoint); then `run_dir`, or `<root>/<name>-<time>`, is claimed (`claimed_run_dir`:
    refused if it holds a run and neither `resume` nor `overwrite` is given, or if another run holds its
    lock; removed again if the block fails before the run wrote anything), with `config.yaml` in it.
    `name` defaults to `config.name`, `root` to the config's `run_root`, else "runs".
    Under torchrun every process gets the same directory (rank 0 makes and locks it).
    `overrides`: the command line's `key=value` items, applied before the check (`load_config`).
    """
    from pointlift.engine.config import load_config
    from pointlift.engine.rundir import claimed_run_dir

    config = load_config(config_path, config_class, overrides)
    if resume and run_dir is None:
        raise PointliftConfigError("--resume needs --run-dir (the run to continue)")
    if overwrite and run_dir is None:
        raise PointliftConfigError("--overwrite needs --run-dir (the run to replace)")
    if check is not None:
        check(config)
    if name is None:
        name = config.name
    if root is None:
        root = getattr(config, "run_root", "runs")
    with claimed_run_dir(name, root, run_dir, config=config, resume=resume, overwrite=overwrite) as path:
        yield config, path


def train_method(method, config_path: str | Path, resume: bool = False, run_dir: str | Path | None = None,
                 overrides: Sequence[str] = (), *, overwrite: bool = False) -> dict:
    """`pointlift pretrain|finetune NAME [KEY=VALUE ...]`: prepare the run (relative input paths must exist),
    train the registry's `method`, print its summary line (rank 0). Returns the method's summary."""
    from pointlift.engine.config import check_input_paths
    from pointlift.engine.distributed import is_main_process

    _refuse_another_methods_config(method, config_path)

    def check(config) -> None:
        check_input_paths(config)
        if method.check is not None:
            method.check(config)

    with prepare_run(config_path, method.config, resume, run_dir, overwrite=overwrite, name=method.run_name,
                     check=check, overrides=overrides) as (config, run_dir):
        summary = method.train(config, run_dir, resume=resume)
    if is_main_process():
        if not method.writes_report:
            from pointlift.report import write_training_report

            write_training_report(run_dir, f"{method.title}: {getattr(config, 'name', method.name)}", summary, config)
        print(method.summary_line(summary, run_dir))
    return summary


def _refuse_another_methods_config(method, config_path: str | Path) -> None:
    """A config of another command (an I2P-MAE file given to `finetune segmentation`) is named as such,
    with the command that takes it, instead of as an unknown key of this one."""
    import dataclasses

    import yaml

    from pointlift.registry import METHODS

    try:
        data = yaml.safe_load(Path(config_path).read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return  # load_config reports these with the file named
    if not isinstance(data, dict):
        return
    keys = set(data)
    if keys <= {f.name for f in dataclasses.fields(method.config)}:
        return
    for other in METHODS:
        if other.verb and other is not method and keys <= {f.name for f in dataclasses.fields(other.config)}:
            raise PointliftConfigError(
                f"{config_path}: this is a `pointlift {other.verb} {other.name}` config, not one of "
                f"`pointlift {method.verb} {method.name}` (keys: {', '.join(sorted(keys))}); "
                f"run `pointlift {other.verb} {other.name} --config {config_path}`")
