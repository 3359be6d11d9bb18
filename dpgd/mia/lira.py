"""LiRA (Carlini et al., "Membership Inference Attacks From First Principles", 2022).

The statistic of a record (x, y) under a model f is the logit-scaled confidence
phi = log(p_y / (1 - p_y)), which is close to Gaussian across training runs. Given phi of
every population record in K runs and who was a member of each run:

* each run k in turn is the target; its shadows are the K-2 runs outside its
  complementary pair (the partner's membership is the exact complement of the target's,
  so keeping it would make the shadows' IN/OUT counts depend on the target's membership
  and bias the online score below chance under the null);
* **online**: per record, Gaussians fitted to phi over the shadows where it was IN and
  where it was OUT; score = log N(phi_target; IN) - log N(phi_target; OUT);
* **offline**: only the OUT fit; score = -log P(Z > phi_target) under OUT (the paper's
  one-sided test: high when the target is more confident than non-members would be).

With few shadows per record a per-record variance is noisy, so by default one variance is
pooled over all records (within-record residuals), separately for IN and OUT, as the
paper recommends below ~64 shadows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def logit_scaled_confidence(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """phi = log p_y - log(1 - p_y) = logit_y - logsumexp(other logits), stable for any p_y."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return true - torch.logsumexp(others, dim=1)


@dataclass(frozen=True)
class LiraScores:
    """Scores of every (run, record) pair with the run's true membership, all (K, n)."""

    online: torch.Tensor
    offline: torch.Tensor
    membership: torch.Tensor


def partner(run: int) -> int:
    """The run whose members are this run's non-members (runs come in pairs 2i, 2i+1)."""
    return run ^ 1


def _fit(phi: torch.Tensor, mask: torch.Tensor, pooled: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean per record and variance (pooled scalar or per record) of phi where ``mask``."""
    weight = mask.to(phi.dtype)
    count = weight.sum(0)
    if bool((count < 1).any()):
        raise ValueError("a record has no shadow observation on one side; use more shadow runs")
    mean = (phi * weight).sum(0) / count
    squares = ((phi - mean) ** 2 * weight).sum(0)
    if pooled:
        dof = float(count.sum() - count.numel())
        variance = squares.sum() / dof if dof > 0 else torch.tensor(float("nan"), dtype=phi.dtype)
        variance = variance.expand_as(mean)
    else:
        variance = squares / (count - 1).clamp(min=1)
    # A floor so a run of identical values (e.g. saturated confidences) cannot divide by 0.
    return mean, torch.nan_to_num(variance, nan=1.0).clamp(min=1e-8)


def _log_normal(x: torch.Tensor, mean: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    return -0.5 * ((x - mean) ** 2 / variance + torch.log(variance) + math.log(2 * math.pi))


def lira_scores(phi: torch.Tensor, membership: torch.Tensor, global_variance: bool = True) -> LiraScores:
    """Leave-one-pair-out LiRA over K runs: ``phi`` and boolean ``membership`` are (K, n)."""
    if phi.shape != membership.shape or phi.dim() != 2:
        raise ValueError(f"phi {tuple(phi.shape)} and membership {tuple(membership.shape)} must both be (K, n)")
    runs = phi.shape[0]
    if runs < 4 or runs % 2:
        raise ValueError(f"LiRA needs an even number of runs >= 4, got {runs}")
    phi = phi.double()
    membership = membership.bool()
    online = torch.empty_like(phi)
    offline = torch.empty_like(phi)
    for target in range(runs):
        shadows = [k for k in range(runs) if k not in (target, partner(target))]
        obs, member = phi[shadows], membership[shadows]
        mean_in, var_in = _fit(obs, member, global_variance)
        mean_out, var_out = _fit(obs, ~member, global_variance)
        x = phi[target]
        online[target] = _log_normal(x, mean_in, var_in) - _log_normal(x, mean_out, var_out)
        z = (x - mean_out) / var_out.sqrt()
        offline[target] = -torch.special.log_ndtr(-z)
    return LiraScores(online=online, offline=offline, membership=membership)
