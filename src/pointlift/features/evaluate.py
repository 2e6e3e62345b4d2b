"""`pointlift eval svm|fewshot`: frozen-feature probes of any checkpoint on any shape set.

Both embed the train and test splits of a shape set with the checkpoint's network (its `.embed`,
as `pointlift embed` does), then run the probes of `pointlift.tasks.svm` / `.fewshot`: a linear
SVM whose C is chosen by cross-validation on the training features only, and N-way K-shot
episodes (support from train, queries from test) reported as mean ± std over folds. With
`compare_untrained` the same architecture, freshly initialised, is probed the same way: the
counterpart a pretrained network has to beat on *your* data.

Every kind with an embedder works (i2p_mae, image2point, ppkt, i2p_mae_classifier); the shape set's
point count defaults to the one the checkpoint was trained with.
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from pointlift.data.shape_sets import ShapeSetConfig, load_points, resolve_format
from pointlift.engine.config import load_config
from pointlift.errors import PointliftConfigError, PointliftDataError
from pointlift.engine.checkpoint import resolve_checkpoint
from pointlift.features.embed import checkpoint_num_points, embed_points, load_embedder


def data_config(data: str | Path, num_points: int | None = None, meta: dict | None = None, **overrides) -> ShapeSetConfig:
    """The shape set of `--data`: a YAML/JSON ShapeSetConfig file, or a path whose layout is detected.
    Unset point counts follow the checkpoint; command-line overrides win."""
    data = Path(data)
    if data.suffix.lower() in (".yaml", ".yml", ".json") and data.is_file():
        import yaml

        try:
            raw = yaml.safe_load(data.read_text())
        except yaml.YAMLError as error:
            raise PointliftConfigError(f"{data}: not valid YAML ({str(error).splitlines()[0]})") from None
        if not isinstance(raw, dict):
            raise PointliftConfigError(f"{data}: expected a mapping of ShapeSetConfig keys")
        raw.setdefault("num_points", checkpoint_num_points(meta or {}))
        config = load_config(raw, ShapeSetConfig)
    else:
        config = ShapeSetConfig(path=str(data), num_points=checkpoint_num_points(meta or {}))
    if num_points is not None:
        config = replace(config, num_points=num_points)
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    return replace(config, format=resolve_format(config))


def _data_record(config: ShapeSetConfig) -> dict:
    """The shape set as recorded in result JSON: settings of other layouts (a ScanObjectNN variant for a
    point folder, raw-.bin columns for an h5 set) are left out, since they played no part."""
    record = asdict(config)
    if config.format != "scanobjectnn_h5":
        record.pop("variant")
    if config.format != "point_folder":
        record.pop("columns")
    return record


def _load_splits(config: ShapeSetConfig) -> tuple[dict, list[str]]:
    """Train and test point sets; a training split with fewer than two classes cannot train a probe."""
    splits, names = {}, []
    for split in ("train", "test"):
        points, labels, names = load_points(config, split)
        splits[split] = (points, labels)
    classes = len(set(splits["train"][1].tolist()))
    if classes < 2:
        raise PointliftDataError(config.path, f"its training split holds {classes} class(es) "
                                              f"({', '.join(names) or 'none'}); a linear probe needs at least 2")
    return splits, names


def _features(checkpoint, splits: dict, untrained: bool, batch_size: int, device, seed: int) -> dict:
    model, _ = load_embedder(checkpoint, untrained=untrained, seed=seed)
    return {split: (embed_points(model, points, batch_size, device), labels)
            for split, (points, labels) in splits.items()}


def _setup(checkpoint, data, num_points, device, fmt=None, variant=None):
    from pointlift.engine.checkpoint import read_checkpoint_meta

    checkpoint = resolve_checkpoint(checkpoint)
    meta = read_checkpoint_meta(checkpoint)
    config = data_config(data, num_points, meta, format=fmt, variant=variant)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return checkpoint, meta, config, device


def evaluate_svm(checkpoint, data, *, num_points: int | None = None, fmt: str | None = None,
                 variant: str | None = None, folds: int = 5, compare_untrained: bool = False, batch_size: int = 32,
                 device=None, seed: int = 0) -> dict:
    """Linear-SVM accuracy on the test split (C by `folds`-fold CV on train); the JSON record."""
    from pointlift.tasks.svm import DEFAULT_CS, fit_linear_svm

    start = time.perf_counter()
    checkpoint, meta, config, device = _setup(checkpoint, data, num_points, device, fmt, variant)
    record = {"task": "svm", "checkpoint": str(checkpoint), "kind": (meta.get("model_spec") or {}).get("kind"),
              "data": _data_record(config), "cv_folds": folds, "Cs": list(DEFAULT_CS)}
    splits, class_names = _load_splits(config)
    for arm in (("pretrained", "untrained") if compare_untrained else ("pretrained",)):
        features = _features(checkpoint, splits, arm == "untrained", batch_size, device, seed)
        (train_x, train_y), (test_x, test_y) = features["train"], features["test"]
        probe = fit_linear_svm(train_x, train_y, folds=folds, seed=seed)
        result = {"accuracy": probe.score(test_x, test_y), "C": probe.C,
                  "cv_accuracy": {str(c): a for c, a in probe.cv_accuracy.items()}}
        if arm == "pretrained":
            record.update(result, train_shapes=int(len(train_y)), test_shapes=int(len(test_y)),
                          num_classes=len(class_names), feature_dim=int(train_x.shape[1]))
        else:
            record["untrained"] = result
    record["seconds"] = round(time.perf_counter() - start, 3)
    return record


def evaluate_fewshot(checkpoint, data, *, way: int = 5, shot: int = 10, folds: int = 10, test_per_class: int = 20,
                     num_points: int | None = None, fmt: str | None = None, variant: str | None = None,
                     compare_untrained: bool = False, batch_size: int = 32, device=None, seed: int = 0) -> dict:
    """N-way K-shot accuracy over `folds` episodes, mean ± std (population std over folds)."""
    from pointlift.tasks.fewshot import fewshot_eval

    if way < 2 or shot < 1 or folds < 1 or test_per_class < 1:
        raise PointliftConfigError(f"fewshot: need --way >= 2 and --shot, --folds, --test-per-class >= 1; "
                                   f"got {way}, {shot}, {folds}, {test_per_class}")
    start = time.perf_counter()
    checkpoint, meta, config, device = _setup(checkpoint, data, num_points, device, fmt, variant)
    record = {"task": "fewshot", "checkpoint": str(checkpoint), "kind": (meta.get("model_spec") or {}).get("kind"),
              "data": _data_record(config), "way": way, "shot": shot, "folds": folds, "test_per_class": test_per_class,
              "seed": seed}
    splits, _ = _load_splits(config)
    for arm in (("pretrained", "untrained") if compare_untrained else ("pretrained",)):
        features = _features(checkpoint, splits, arm == "untrained", batch_size, device, seed)
        (train_x, train_y), (test_x, test_y) = features["train"], features["test"]
        result = fewshot_eval(train_x, train_y, test_x, test_y, n_way=way, k_shot=shot, folds=folds,
                              test_per_class=test_per_class, seed=seed)
        summary = {"mean": result.mean, "std": result.std, "accuracies": result.accuracies,
                   "summary": f"{100 * result.mean:.1f} ± {100 * result.std:.1f} %"}
        if arm == "pretrained":
            record.update(summary)
        else:
            record["untrained"] = summary
    record["seconds"] = round(time.perf_counter() - start, 3)
    return record


def describe(record: dict) -> str:
    """One line for the terminal."""
    untrained = record.get("untrained")
    if record["task"] == "svm":
        line = f"svm: test accuracy {100 * record['accuracy']:.1f} % (C={record['C']} by {record['cv_folds']}-fold CV " \
               f"on train; {record['train_shapes']} train / {record['test_shapes']} test shapes)"
        if untrained:
            line += f"; untrained twin {100 * untrained['accuracy']:.1f} %"
        return line
    line = f"fewshot {record['way']}-way {record['shot']}-shot over {record['folds']} folds: {record['summary']}"
    if untrained:
        line += f"; untrained twin {untrained['summary']}"
    return line
