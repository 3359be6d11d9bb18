"""``results.json["privacy"]`` and ``privacy_ledger.json``: what a run says about its guarantee.

Recomputed from the ledger, never copied from the config or the plan. Private and
non-private runs report the same keys: ``dp`` is true only for a private run whose noise
was secret (:mod:`dpgd.privacy.randomness`).
"""

from __future__ import annotations

import math
from typing import Any

from dpgd.privacy.ledger import ADJACENCY, PrivacyLedger
from dpgd.privacy.public import PUBLIC_ASSUMPTIONS, public_assumption
from dpgd.privacy.randomness import NoiseSource, describe


def privacy_summary(ledger: PrivacyLedger, *, epsilon_target: float, delta: float,
                    noise: NoiseSource, public: dict[str, Any] | None = None) -> dict[str, Any]:
    """The privacy report of a run; raises if the ledger composes above the target (a bug).

    ``public``: the public pool the run used (:meth:`dpgd.public.PublicKnowledge.describe`),
    named in ``public_assumptions`` with its fingerprint and image count."""
    private = math.isfinite(epsilon_target)
    if not private:
        report: dict[str, Any] = {"epsilon": math.inf, "epsilon_rdp": math.inf, "delta": float(delta),
                                  "accountant": None, "pld_interval": 0.0, "mechanisms": [], "note": "epsilon=inf"}
    else:
        report = ledger.report(float(delta)).to_dict()
        if report["epsilon"] > epsilon_target:
            raise RuntimeError(
                f"privacy bug: the ledger composes to epsilon={report['epsilon']:.4f} above the target {epsilon_target}"
            )
    report["dp"] = private and noise.is_secret
    report["non_private"] = not private
    report["noise"] = describe(noise) if private else "none: epsilon=inf adds no noise"
    report["release_id"] = ledger.release_id
    report["adjacency"] = ADJACENCY
    report["public_assumptions"] = list(PUBLIC_ASSUMPTIONS)
    if public is not None:
        report["public_assumptions"].append(public_assumption(public))
        report["public_data"] = dict(public)
    return report


def ledger_document(ledger: PrivacyLedger, report: dict[str, Any]) -> dict[str, Any]:
    """``privacy_ledger.json``: the report plus the ledger's format keys, so
    :meth:`PrivacyLedger.from_dict` loads it back (versioned)."""
    return report | {key: value for key, value in ledger.to_dict().items() if key != "mechanisms"}
