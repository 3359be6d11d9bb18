"""Independent accountant calls for tests: the libraries' own public interfaces, never
:mod:`dpgd.privacy.analysis` (which composes PLDs itself and merges records)."""

from __future__ import annotations

import warnings

import dp_accounting
import numpy as np
from dp_accounting.pld import pld_privacy_accountant
from opacus.accountants import PRVAccountant


def _triples(records):
    """(sigma, q, steps) from SubsampledGaussian records or ledger dicts."""
    out = []
    for r in records:
        if isinstance(r, dict):
            out.append((r["noise_multiplier"], r["sample_rate"], r["steps"]))
        else:
            out.append((r.noise_multiplier, r.sample_rate, r.steps))
    return out


def dp_accounting_pld(records, delta: float, interval: float = 1e-4) -> float:
    """dp-accounting's PLDAccountant on DpEvents, one event per record, as a user would call it."""
    accountant = pld_privacy_accountant.PLDAccountant(value_discretization_interval=interval)
    for sigma, q, steps in _triples(records):
        event = dp_accounting.GaussianDpEvent(sigma)
        if q < 1:
            event = dp_accounting.PoissonSampledDpEvent(q, event)
        accountant.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    return float(accountant.get_epsilon(delta))


def opacus_prv_upper(records, delta: float, eps_error: float) -> float:
    """A plain opacus PRV accountant's upper bound (the true epsilon lies within
    ``[upper - 2 eps_error, upper]``): a second, independent implementation."""
    accountant = PRVAccountant()
    accountant.history = _triples(records)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return float(accountant.get_epsilon(delta=delta, eps_error=eps_error))
