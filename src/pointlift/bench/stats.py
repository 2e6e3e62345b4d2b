"""Paired comparisons over seeds: a gain is the mean of per-seed differences (same seed, same labelled subset,
same data order for both arms) with a paired-t interval - what a benchmark reports when it claims one arm
beats another. Per-class IoU differences are paired the same way."""

from __future__ import annotations

import math

import numpy as np


def paired_difference(treated, baseline, confidence: float = 0.95) -> dict:
    """Per-seed differences treated - baseline, their mean, sample std and the paired-t interval.

    With one seed the interval is undefined (None): one pair says nothing about seed noise.
    `excludes_zero` is True when the whole interval lies on one side of 0.
    """
    from scipy.stats import t

    treated, baseline = np.asarray(treated, dtype=float), np.asarray(baseline, dtype=float)
    if treated.shape != baseline.shape or treated.ndim != 1 or not len(treated):
        raise ValueError(f"paired_difference needs two equal-length lists of figures, got {treated.shape} "
                         f"and {baseline.shape}")
    diff = treated - baseline
    n, mean = len(diff), float(diff.mean())
    record = {"mean": mean, "low": None, "high": None, "std": None, "n": n, "confidence": confidence,
              "per_seed": diff.tolist(), "excludes_zero": False}
    if n > 1:
        std = float(diff.std(ddof=1))
        half = float(t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
        record.update(std=std, low=mean - half, high=mean + half, excludes_zero=bool(mean - half > 0 or mean + half < 0))
    return record


def per_class_differences(treated: list[dict], baseline: list[dict], confidence: float = 0.95) -> dict:
    """{class: paired_difference} of per-class IoU dicts (one per seed, same order in both lists); a class is
    paired over the seeds where both arms scored it (IoU not None)."""
    if len(treated) != len(baseline):
        raise ValueError(f"per_class_differences: {len(treated)} vs {len(baseline)} seeds")
    out = {}
    for name in treated[0] if treated else {}:
        pairs = [(a[name], b[name]) for a, b in zip(treated, baseline)
                 if a.get(name) is not None and b.get(name) is not None]
        if pairs:
            out[name] = paired_difference([a for a, _ in pairs], [b for _, b in pairs], confidence)
    return out
