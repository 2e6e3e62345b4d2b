"""Linear SVM on frozen features: the standard probe of a self-supervised point encoder.

Two protocols. `paper_svm_accuracy` is the one in I2P-MAE's code (`tools/runner_pretrain.py`):
`sklearn.svm.SVC(C=0.01, kernel="linear")` on the raw features, no scaling, scored on the test
split; report it for the last checkpoint only (that runner keeps the best test score, which
selects on the test set - never do that).

pointlift's protocol (`svm_accuracy`, `fit_linear_svm`): C is chosen by stratified k-fold cross-validation on the training features only (the official
I2P-MAE code picks checkpoints and settings on the test set; we never look at it before scoring).
Features are standardised with statistics of the training split, so one grid of C values fits
encoders whose feature scales differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pointlift.errors import PointliftConfigError

DEFAULT_CS = (0.001, 0.01, 0.1, 1.0, 10.0)
PAPER_C = 0.01  # runner_pretrain.py; runner_test_svm.py uses 0.0093 (ModelNet40) and 0.018 (ScanObjectNN)


@dataclass
class LinearSVMProbe:
    """A fitted probe: `C` chosen by CV, the mean CV accuracy of every tried C, and the model."""

    C: float
    cv_accuracy: dict[float, float]
    pipeline: object  # sklearn Pipeline(StandardScaler, LinearSVC)

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.pipeline.predict(np.asarray(features, dtype=np.float64))

    def score(self, features: np.ndarray, labels: np.ndarray) -> float:
        return float(np.mean(self.predict(features) == np.asarray(labels)))


def _check(features: np.ndarray, labels: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    if features.ndim != 2 or labels.ndim != 1 or len(features) != len(labels):
        raise PointliftConfigError(f"{name}: expected features (N, F) and labels (N,), got "
                                   f"{features.shape} and {labels.shape}")
    if not np.isfinite(features).all():
        raise PointliftConfigError(f"{name}: features contain NaN or infinite values")
    return features, labels


def _make_pipeline(C: float, seed: int):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    return make_pipeline(StandardScaler(), LinearSVC(C=C, max_iter=20000, random_state=seed))


def fit_linear_svm(train_features: np.ndarray, train_labels: np.ndarray, Cs=DEFAULT_CS, folds: int = 5,
                   seed: int = 0) -> LinearSVMProbe:
    """Fit a linear SVM, choosing C among `Cs` by stratified `folds`-fold CV on the training data."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    features, labels = _check(train_features, train_labels, "train")
    if not Cs:
        raise PointliftConfigError("svm: need at least one C value")
    smallest_class = int(np.unique(labels, return_counts=True)[1].min()) if len(labels) else 0
    folds = min(folds, smallest_class)
    cv_accuracy: dict[float, float] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if len(Cs) == 1 or folds < 2:
            best = float(Cs[0]) if len(Cs) == 1 else 0.01
        else:
            splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
            for C in Cs:
                scores = cross_val_score(_make_pipeline(C, seed), features, labels, cv=splitter)
                cv_accuracy[float(C)] = float(scores.mean())
            best = max(cv_accuracy, key=lambda c: (cv_accuracy[c], -c))  # ties: the stronger regulariser
        pipeline = _make_pipeline(best, seed).fit(features, labels)
    return LinearSVMProbe(C=best, cv_accuracy=cv_accuracy, pipeline=pipeline)


def svm_accuracy(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
                 test_labels: np.ndarray, Cs=DEFAULT_CS, folds: int = 5, seed: int = 0) -> tuple[float, float]:
    """(test accuracy, chosen C): fit on train with C by CV on train, then score the test split once."""
    test_features, test_labels = _check(test_features, test_labels, "test")
    probe = fit_linear_svm(train_features, train_labels, Cs=Cs, folds=folds, seed=seed)
    return probe.score(test_features, test_labels), probe.C


def paper_svm_accuracy(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
                       test_labels: np.ndarray, C: float = PAPER_C) -> float:
    """The paper's protocol: SVC(kernel="linear", C) on raw features, fit on train, test accuracy."""
    from sklearn.svm import SVC

    features, labels = _check(train_features, train_labels, "train")
    test_features, test_labels = _check(test_features, test_labels, "test")
    if C <= 0:
        raise PointliftConfigError(f"svm: C must be > 0, got {C}")
    classifier = SVC(C=C, kernel="linear").fit(features, labels)
    return float(np.mean(classifier.predict(test_features) == test_labels))
