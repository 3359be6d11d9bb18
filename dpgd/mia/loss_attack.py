"""The global loss-threshold attack (Yeom et al. 2018): members have lower loss.

No shadows and no per-record calibration: one target run, score = -loss of each
population record under the models trained on that run's distilled set. Cheap and weak;
it bounds leakage from below and is a sanity check beside LiRA.
"""

from __future__ import annotations

import torch


def loss_scores(loss: torch.Tensor) -> torch.Tensor:
    """Membership scores (higher = more likely a member) from per-record losses."""
    return -loss.double()
