"""The attack's one figure: ROC curves on log-log axes with the chance line.

Only scores are drawn, never an image of the private set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dpgd.mia.metrics import RocMetrics

# Curves start at this FPR/TPR on the log axes (a zero has no place on them).
FLOOR = 1e-4


def plot_roc(curves: dict[str, RocMetrics], path: Path, title: str) -> np.ndarray:
    """Save the overlay to ``path`` and return it as an (H, W, 3) uint8 array for trackers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    for name, roc in curves.items():
        ax.plot(np.maximum(roc.fpr, FLOOR), np.maximum(roc.tpr, FLOOR),
                label=f"{name} (AUC {roc.auc:.3f}, TPR@0.1% {roc.tpr_at_fpr[0.001]:.3f})")
    ax.plot([FLOOR, 1], [FLOOR, 1], "k--", linewidth=1, label="chance")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(FLOOR, 1)
    ax.set_ylim(FLOOR, 1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    fig.canvas.draw()
    array = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return array
