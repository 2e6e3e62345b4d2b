"""Quickstart step: a tiny I2P-MAE pretrained for ~1 minute on synthetic shapes, its frozen features vs the
untrained network's (linear SVM), with what the teacher sees, the loss curves and a t-SNE as plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pointlift.engine.config import TrainConfig
from pointlift.methods.i2p_mae.config import DataConfig, I2PMAEConfig, I2PMAEExperiment, TeacherConfig
from pointlift.methods.i2p_mae.data import load_pretrain_points
from pointlift.methods.i2p_mae.embedder import embed_array
from pointlift.methods.i2p_mae.model import I2PMAE
from pointlift.methods.i2p_mae.pretrain import pretrain
from pointlift.models.point_m2ae.config import PointM2AEConfig


def quickstart_model_config() -> PointM2AEConfig:
    """A tiny backbone that pretrains for a few hundred steps within the quickstart's minute."""
    return PointM2AEConfig(num_points=256, num_centers=(64, 32, 16), group_sizes=(8, 8, 4),
                           encoder_dims=(48, 96, 192), encoder_depths=(1, 1, 1), num_heads=4, embed_hidden=16,
                           decoder_dims=(192, 96), decoder_depths=(1, 1), drop_path=0.0)


def quickstart(run_dir, progress: bool = True, *, data_seed: int = 0) -> dict:
    """~1 minute on 2 CPU cores: pretrain a tiny I2P-MAE on synthetic shapes (bundled EfficientNet-Lite0
    teacher), then compare linear-SVM accuracy of its frozen features with the untrained network's.
    `data_seed` d generates other shapes (data.seed 10 d; 0 is the demo's own)."""
    from pointlift.engine.config import OptimConfig
    from pointlift.tasks.svm import svm_accuracy

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    experiment = I2PMAEExperiment(
        name="quickstart",
        method=I2PMAEConfig(model=quickstart_model_config(), recipe="pointlift", image_size=96, temperature=0.5),
        teacher=TeacherConfig(stage=-2),
        data=DataConfig(format="synthetic", num_points=256, max_shapes=48, cache_dir=None, seed=10 * data_seed),
        train=TrainConfig(epochs=8, batch_size=16, log_every=3, checkpoint_every=0,
                          optim=OptimConfig(lr=1e-3, weight_decay=0.05, warmup_steps=10)),
        device="cpu")
    train_points, train_labels, _ = load_pretrain_points(experiment.data, "train")
    test_points, test_labels, class_names = load_pretrain_points(experiment.data, "test")
    untrained = I2PMAE(I2PMAEConfig(model=quickstart_model_config(), recipe="pointlift", feature_target=False,
                                    guided_masking=False))
    model, result, info = pretrain(experiment, run_dir / "pretrain", progress=progress, points=train_points)
    scores, features = {}, {}
    for name, network in (("untrained", untrained), ("i2p_mae", model)):
        features[name] = embed_array(network, test_points)
        accuracy, _ = svm_accuracy(embed_array(network, train_points), train_labels,
                                   features[name], test_labels, folds=3)
        scores[name] = accuracy
    losses = [row["loss"] for row in result.history if "loss" in row]
    plots = _quickstart_plots(run_dir, model, test_points, test_labels, class_names, features, experiment)
    figures = {"svm_acc_untrained": scores["untrained"], "svm_acc_i2p_mae": scores["i2p_mae"],
               "loss_first": losses[0] if losses else float("nan"),
               "loss_last": losses[-1] if losses else float("nan")}
    return {"figures": figures, "plots": plots}


def _quickstart_plots(run_dir: Path, model: "I2PMAE", points: np.ndarray, labels: np.ndarray,
                      class_names: list, features: dict, experiment: I2PMAEExperiment) -> list:
    """What the 2D teacher sees (depth views + saliency), the loss curves, and a t-SNE of frozen
    features before and after pretraining."""
    from pointlift.geometry.render import render_depth_views, views_to_teacher_input
    from pointlift.report import plot_curves, plot_depth_views, plot_tsne, read_metrics_csv

    plots = []
    views = render_depth_views(torch.from_numpy(points[:1]), experiment.method.image_size, experiment.method.footprint)
    saliency = None
    if model.teacher is not None:
        images = views_to_teacher_input(views.images, model.teacher.mean, model.teacher.std)
        saliency = model.teacher.saliency(images).numpy()
    plots.append(("the three depth views of a shape and the teacher's saliency",
                  plot_depth_views(views.images[0].numpy(), saliency, run_dir / "i2p_mae_views.png",
                                   title=f"a {class_names[int(labels[0])]} as the 2D teacher sees it")))
    curves = {k: v for k, v in read_metrics_csv(run_dir / "pretrain" / "metrics.csv").items()
              if k.startswith("loss")}
    if curves:
        plots.append(("pretraining losses", plot_curves(curves, run_dir / "i2p_mae_losses.png",
                                                        title="I2P-MAE pretraining")))
    plots.append(("t-SNE of frozen encoder features on test shapes, before and after pretraining",
                  plot_tsne({"untrained": features["untrained"], "after I2P-MAE": features["i2p_mae"]},
                            labels, class_names, run_dir / "i2p_mae_tsne.png")))
    return plots
