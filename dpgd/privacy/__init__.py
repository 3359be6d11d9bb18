"""Privacy accounting for dpgd.

Neighbouring relation, stated once for the whole package: two data sets are adjacent if
one is the other with ONE RECORD ADDED OR REMOVED (add/remove adjacency). This is the
relation under which opacus's accountants analyse Poisson subsampling, and the one every
epsilon dpgd reports refers to. Sensitivities are bounds on the change of a released
quantity when one record is added or removed.

Layout: :mod:`.mechanisms` (immutable records of what was released), :mod:`.analysis`
(pure functions: epsilon of a record list, dp-accounting PLD with an opacus RDP cross-check), :mod:`.ledger`
(the record list a run executed, and its report), :mod:`.plan` (noise multipliers for
a total budget split across components; its numerical search is in :mod:`._search`),
:mod:`.schedules` (relative noise schedules across iterations, stored as constant pieces),
:mod:`.components` (the one contract of a DP component: need, declare, check what ran),
:mod:`.randomness` (secret per-run noise streams), :mod:`.public` (what a release treats
as public) and :mod:`.summary` (``results.json["privacy"]`` and ``privacy_ledger.json``).
"""

from dpgd.privacy.analysis import AccountingError, compose_epsilon, pld_epsilon, rdp_epsilon
from dpgd.privacy.components import PrivacyNeed, ReleaseLog, declare_planned
from dpgd.privacy.ledger import ADJACENCY, PrivacyLedger, PrivacyReport
from dpgd.privacy.mechanisms import SubsampledGaussian
from dpgd.privacy.plan import ComponentRequest, NoisePlan, check_delta, plan_budget
from dpgd.privacy.schedules import SCHEDULE_KINDS, relative_schedule, schedule_from_config

__all__ = [
    "ADJACENCY",
    "AccountingError",
    "ComponentRequest",
    "NoisePlan",
    "PrivacyLedger",
    "PrivacyNeed",
    "PrivacyReport",
    "ReleaseLog",
    "SCHEDULE_KINDS",
    "SubsampledGaussian",
    "check_delta",
    "compose_epsilon",
    "declare_planned",
    "plan_budget",
    "pld_epsilon",
    "rdp_epsilon",
    "relative_schedule",
    "schedule_from_config",
]
