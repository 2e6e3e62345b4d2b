"""N-way K-shot classification with a linear SVM on frozen features (the Point-BERT/I2P-MAE protocol).

Each fold draws N classes, K support shapes per class from the training split and `test_per_class`
query shapes per class from the test split, fits a linear SVM on the support set only and scores
the queries. The result is the mean and standard deviation over folds (10 folds by convention).
C is chosen by cross-validation on the support set of each fold (never on the queries).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pointlift.errors import PointliftConfigError
from pointlift.tasks.svm import fit_linear_svm

FEWSHOT_CS = (0.01, 0.1, 1.0)


@dataclass
class FewShotResult:
    """Accuracy per fold, and their mean and (population) standard deviation, as fractions."""

    accuracies: list[float]
    n_way: int
    k_shot: int

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracies))

    @property
    def std(self) -> float:
        return float(np.std(self.accuracies))


def sample_episode(train_labels: np.ndarray, test_labels: np.ndarray, n_way: int, k_shot: int,
                   test_per_class: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(classes (N,), support indices into train (N*K,), query indices into test (N*Q,)) for one fold."""
    train_labels = np.asarray(train_labels)
    test_labels = np.asarray(test_labels)
    eligible = [c for c in np.unique(train_labels)
                if (train_labels == c).sum() >= k_shot and (test_labels == c).sum() >= test_per_class]
    if len(eligible) < n_way:
        raise PointliftConfigError(f"few-shot: only {len(eligible)} classes have {k_shot} training and "
                                   f"{test_per_class} test shapes; cannot draw {n_way} ways")
    classes = rng.choice(np.asarray(eligible), size=n_way, replace=False)
    support = np.concatenate([rng.choice(np.flatnonzero(train_labels == c), k_shot, replace=False) for c in classes])
    query = np.concatenate([rng.choice(np.flatnonzero(test_labels == c), test_per_class, replace=False)
                            for c in classes])
    return classes, support, query


def fewshot_eval(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
                 test_labels: np.ndarray, n_way: int = 10, k_shot: int = 10, folds: int = 10,
                 test_per_class: int = 20, seed: int = 0, Cs=FEWSHOT_CS) -> FewShotResult:
    """N-way K-shot accuracy over `folds` random episodes (support from train, queries from test)."""
    if n_way < 2 or k_shot < 1 or folds < 1 or test_per_class < 1:
        raise PointliftConfigError(f"few-shot: need n_way >= 2, k_shot, folds, test_per_class >= 1; got "
                                   f"{n_way}, {k_shot}, {folds}, {test_per_class}")
    train_features = np.asarray(train_features, dtype=np.float64)
    test_features = np.asarray(test_features, dtype=np.float64)
    rng = np.random.default_rng(seed)
    accuracies = []
    for fold in range(folds):
        classes, support, query = sample_episode(train_labels, test_labels, n_way, k_shot, test_per_class, rng)
        # relabel to 0..N-1 so each episode is a fresh N-way problem
        remap = {int(c): i for i, c in enumerate(classes)}
        support_y = np.array([remap[int(c)] for c in np.asarray(train_labels)[support]])
        query_y = np.array([remap[int(c)] for c in np.asarray(test_labels)[query]])
        probe = fit_linear_svm(train_features[support], support_y, Cs=Cs, folds=min(3, k_shot), seed=seed + fold)
        accuracies.append(probe.score(test_features[query], query_y))
    return FewShotResult(accuracies=accuracies, n_way=n_way, k_shot=k_shot)
