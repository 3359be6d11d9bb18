"""ROC metrics of a membership score: AUC, TPR at low FPR, balanced accuracy.

Low-FPR TPR is the number that matters (Carlini et al. 2022): an attack that confidently
identifies a few members is a privacy failure even at AUC near 0.5. TPR at FPR x is read
off the empirical curve without interpolation: the largest TPR of any threshold whose FPR
is at most x (conservative; interpolation would credit thresholds that do not exist).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve

# FPR levels reported in private/mia.json, as (key suffix, level).
LOW_FPR_LEVELS = (("0.1pct", 0.001), ("1pct", 0.01))
# Points kept in private/mia.json and the tracker table per curve.
MAX_ROC_POINTS = 200


@dataclass(frozen=True)
class RocMetrics:
    auc: float
    tpr_at_fpr: dict[float, float]
    balanced_accuracy: float
    fpr: np.ndarray
    tpr: np.ndarray
    positives: int
    negatives: int

    def to_dict(self, max_points: int = MAX_ROC_POINTS) -> dict[str, object]:
        """The ``private/mia.json`` form: scalar metrics plus a downsampled curve."""
        fpr, tpr = downsample_roc(self.fpr, self.tpr, max_points)
        out: dict[str, object] = {"auc": self.auc}
        for suffix, level in LOW_FPR_LEVELS:
            out[f"tpr_at_{suffix}_fpr"] = self.tpr_at_fpr[level]
        out["balanced_accuracy"] = self.balanced_accuracy
        out["members"] = self.positives
        out["non_members"] = self.negatives
        out["roc"] = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
        return out


def _as_numpy(values: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, level: float) -> float:
    """Largest TPR among thresholds with FPR <= ``level`` (0 when none qualifies)."""
    ok = fpr <= level
    return float(tpr[ok].max()) if ok.any() else 0.0


def roc_metrics(scores: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> RocMetrics:
    """Metrics of ``scores`` (higher = more likely a member) against boolean ``labels``."""
    s = _as_numpy(scores).ravel()
    y = _as_numpy(labels).ravel().astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores but {y.size} labels")
    if not np.isfinite(s).all():
        raise ValueError("membership scores must be finite")
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        raise ValueError("ROC metrics need both members and non-members")
    # Every threshold kept (drop_intermediate=False) so the low-FPR reads are exact.
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return RocMetrics(
        auc=float(roc_auc_score(y, s)),
        tpr_at_fpr={level: tpr_at_fpr(fpr, tpr, level) for _, level in LOW_FPR_LEVELS},
        balanced_accuracy=float(((tpr + 1.0 - fpr) / 2.0).max()),
        fpr=fpr,
        tpr=tpr,
        positives=positives,
        negatives=negatives,
    )


def downsample_roc(fpr: np.ndarray, tpr: np.ndarray, max_points: int = MAX_ROC_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` points of the curve, dense at low FPR (plots use log axes).

    For each FPR on a log-spaced grid the point kept is the best one at or below it, so the
    downsampled curve never claims more than the full one. (0, 0) and (1, 1) are kept.
    """
    if len(fpr) <= max_points:
        return fpr.copy(), tpr.copy()
    positive = fpr[fpr > 0]
    smallest = float(positive.min()) if positive.size else 1.0
    grid = np.geomspace(smallest, 1.0, max_points - 2)
    # fpr is non-decreasing: the last index with fpr <= g holds the largest such TPR.
    index = np.searchsorted(fpr, grid, side="right") - 1
    index = np.unique(np.concatenate([[0], index.clip(0), [len(fpr) - 1]]))
    return fpr[index], tpr[index]
