"""Image2Point's quickstart step: an inflated ImageNet network vs the same network from scratch, on synthetic
shapes, with its two plots (see `pointlift.quickstart`)."""

from __future__ import annotations

import time
from pathlib import Path

from pointlift.engine.config import OptimConfig, TrainConfig
from pointlift.methods.image2point.config import Image2PointConfig, Image2PointDataConfig, InflationConfig
from pointlift.methods.image2point.finetune import finetune


def quickstart(run_dir, progress: bool = True, *, data_seed: int = 0) -> dict:
    """About a minute of CPU time on 2 cores: ImageNet EfficientNet-Lite0 (bundled weights) inflated
    (pointlift's earlier `imagenet-stem` design, copy along z = axis `y-axis`) vs the same network from scratch, identical budget: fip `ioms` (stem and classifier
    train, inner weights frozen, BN statistics adapt), 16^3 voxels (0.125 on the unit sphere), 8 steps
    of 20 on 40 synthetic shapes (4 classes), tested on 32 others (seed 1); chance = 0.25.

    Why these settings (chosen on separate validation shapes, seed 2, not on the test shapes): with
    frozen ImageNet BN statistics (`io`) the xyz voxels drive the head BN+ReLU6 to ~0 and both arms sat
    at chance; at 8^3 voxels every layer past stride 8 sees one site per shape (chance again). `ioms`
    plus re-estimating the adapted BN statistics on the training shapes before the final evaluation
    (`precise_bn`: after 8 momentum-0.1 updates 43% of the ImageNet statistics would remain) gave
    validation accuracy 0.66 inflated vs 0.38 random (training loss 1.52 -> 0.61 vs 1.47 -> 1.49).
    Returns {"figures": {"acc_inflated_ioms", "acc_random_ioms", "chance", "trainable_params_*", "seconds",
    "cpu_seconds"}, "plots": [(caption, png)]} (the shape pointlift.quickstart expects). `data_seed` d generates
    other shapes (training seed 10 d, test seed 10 d + 1; 0 is the demo's own)."""
    from pointlift.data.shapes import ShapeSet
    from pointlift.data.synthetic import make_shapes

    run_dir = Path(run_dir)
    classes = ("sphere", "cube", "torus", "table")
    points, labels, names = make_shapes(num_per_class=10, num_points=300, classes=classes, seed=10 * data_seed)
    test_points, test_labels, _ = make_shapes(num_per_class=8, num_points=300, classes=classes, seed=10 * data_seed + 1)
    train_split = ShapeSet(list(points), labels, names, "train", Path("<synthetic>"))
    test_split = ShapeSet(list(test_points), test_labels, names, "test", Path("<synthetic>"))
    figures: dict = {"chance": 1.0 / len(classes)}
    start, cpu_start = time.perf_counter(), time.process_time()
    for label, weights in (("inflated", None), ("random", "random")):
        config = Image2PointConfig(
            name=f"quickstart-{label}",
            inflation=InflationConfig(teacher="tf_efficientnet_lite0", weights=weights, mode="copy", axis="y-axis",
                                      design="imagenet-stem"),
            fip="ioms", precise_bn=True,
            data=Image2PointDataConfig(voxel_size=0.125, augment=False, pipeline="voxel_mean"),
            train=TrainConfig(epochs=4, batch_size=20, log_every=1, checkpoint_every=0,
                              optim=OptimConfig(name="adamw", lr=1e-2, weight_decay=1e-4)),
            eval_every_epoch=False)
        summary = finetune(config, run_dir / label, progress=progress, train_split=train_split,
                           test_split=test_split)
        figures[f"acc_{label}_ioms"] = summary["overall_acc"]
        figures[f"trainable_params_{label}"] = summary["trainable_params"]
    figures["seconds"] = time.perf_counter() - start
    figures["cpu_seconds"] = time.process_time() - cpu_start
    return {"figures": figures, "plots": _quickstart_plots(run_dir, figures)}


def _quickstart_plots(run_dir: Path, figures: dict) -> list:
    """Training loss of both arms side by side, and their test accuracy against chance."""
    from pointlift.report import plot_bars, plot_curves, read_metrics_csv

    curves = {f"loss, {arm}": read_metrics_csv(run_dir / arm / "metrics.csv").get("loss", [])
              for arm in ("inflated", "random")}
    accuracy = {"test accuracy": {"inflated": figures["acc_inflated_ioms"], "random init": figures["acc_random_ioms"],
                                  "chance": figures["chance"]}}
    return [("training loss, inflated vs random init", plot_curves(curves, run_dir / "image2point_loss.png",
                                                                    title="Image2Point fine-tuning (ioms)")),
            ("test accuracy", plot_bars(accuracy, run_dir / "image2point_accuracy.png",
                                        title="Image2Point on synthetic shapes"))]
