"""The privacy ledger: the list of mechanisms a run actually executed.

The ledger only collects records; the epsilon it reports is computed from them by
:mod:`dpgd.privacy.analysis` on every call, never copied from the config or the plan.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping

from dpgd.errors import ConfigError
import dpgd.privacy.analysis as analysis
from dpgd.privacy.mechanisms import SubsampledGaussian

ADJACENCY = "add/remove one record"
_FORMAT = "dpgd.privacy_ledger"
_VERSION = 2  # 2: every record carries its release_id
_READABLE_VERSIONS = (1, 2)


@dataclass
class PrivacyReport:
    """The composed guarantee of a ledger at one delta.

    ``epsilon`` is dp-accounting's pessimistic PLD bound (``accountant == "pld"``) at the
    discretisation ``pld_interval``; ``epsilon_rdp`` the opacus RDP cross-check. If PLD
    cannot be evaluated the report falls back to RDP: ``accountant == "rdp"``,
    ``pld_interval == 0`` and ``note`` says why.
    """

    epsilon: float
    epsilon_rdp: float
    delta: float
    accountant: str
    pld_interval: float
    mechanisms: list[dict[str, Any]]
    adjacency: str = ADJACENCY
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def new_release_id() -> str:
    """A random id naming one release (one run's noise draws), for composing sweeps."""
    return secrets.token_hex(8)


class PrivacyLedger:
    """Collects :class:`SubsampledGaussian` records as a run executes them.

    Each record carries the id of the release whose noise it drew: the ledger's own
    ``release_id`` (one per run), or that of an earlier run whose output is reused (a cached
    pool). A report over several runs composes each distinct (release id, record) once:
    reusing one noisy output twice is one release, while independent runs, drawing
    independent secret noise, compose by the accountant.
    """

    def __init__(self, mechanisms: Iterable[SubsampledGaussian] = (), release_id: str | None = None) -> None:
        self.release_id = release_id or new_release_id()
        self._mechanisms: list[SubsampledGaussian] = []
        self._releases: list[str] = []
        for m in mechanisms:
            self.declare(m)

    def declare(self, mechanism: SubsampledGaussian, release_id: str | None = None) -> SubsampledGaussian:
        """Record one executed mechanism (validated on construction of the record).

        ``release_id`` names the release the record belongs to when it is not this run's
        (an output reused from another run); default: this ledger's ``release_id``.
        """
        if not isinstance(mechanism, SubsampledGaussian):
            raise TypeError(f"declare() takes a SubsampledGaussian, got {type(mechanism).__name__}")
        self._mechanisms.append(mechanism)
        self._releases.append(str(release_id or self.release_id))
        return mechanism

    @property
    def records(self) -> list[dict[str, Any]]:
        """Every record as a dict with its ``release_id``."""
        return [m.to_dict() | {"release_id": r} for m, r in zip(self._mechanisms, self._releases)]

    @property
    def mechanisms(self) -> tuple[SubsampledGaussian, ...]:
        return tuple(self._mechanisms)

    def components(self) -> tuple[str, ...]:
        """Component names in order of first declaration."""
        return tuple(dict.fromkeys(m.component for m in self._mechanisms))

    def __len__(self) -> int:
        return len(self._mechanisms)

    def report(self, delta: float) -> PrivacyReport:
        """Compose all records at ``delta`` (PLD, cross-checked against RDP).

        Raises ``RuntimeError("accountant disagreement ...")`` if RDP comes out more than
        ``DISAGREEMENT_REL`` below PLD: both are upper bounds on the same epsilon and PLD's
        is the tight one, so that can only be a bug in one of them or in how we call them.
        """
        delta = float(delta)
        if not (0 < delta < 1):
            raise ConfigError(f"delta must be in (0, 1), got {delta!r}")
        records = self.records
        if not self._mechanisms:
            return PrivacyReport(0.0, 0.0, delta, "pld", 0.0, records)
        eps_rdp = analysis.rdp_epsilon(self._mechanisms, delta)
        interval = analysis.pld_interval(self._mechanisms, delta)
        try:
            eps_pld = analysis.pld_epsilon(self._mechanisms, delta, interval)
        except analysis.AccountingError as exc:
            return PrivacyReport(
                eps_rdp, eps_rdp, delta, "rdp", 0.0, records,
                note=f"PLD unavailable, reporting the RDP bound instead: {exc}",
            )
        if eps_rdp < eps_pld * (1 - analysis.DISAGREEMENT_REL) - 1e-9:
            raise RuntimeError(
                f"accountant disagreement: RDP epsilon {eps_rdp:.6g} is below the PLD bound "
                f"{eps_pld:.6g} by more than {analysis.DISAGREEMENT_REL:.0%} at delta={delta:g} for {records}"
            )
        return PrivacyReport(eps_pld, eps_rdp, delta, "pld", interval, records)

    # --- serialisation -------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "adjacency": ADJACENCY,
            "release_id": self.release_id,
            "mechanisms": self.records,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PrivacyLedger":
        if data.get("format", _FORMAT) != _FORMAT or data.get("version", _VERSION) not in _READABLE_VERSIONS:
            raise ConfigError(
                f"not a version-{_VERSION} privacy ledger: format={data.get('format')!r}, "
                f"version={data.get('version')!r}"
            )
        if data.get("adjacency", ADJACENCY) != ADJACENCY:
            raise ConfigError(
                f"ledger assumes adjacency {data.get('adjacency')!r}; dpgd accounts for {ADJACENCY!r}"
            )
        if "mechanisms" not in data:
            raise ConfigError("privacy ledger has no 'mechanisms' list")
        ledger = cls(release_id=data.get("release_id"))
        for record in data["mechanisms"]:
            mechanism, release_id = split_record(record)
            ledger.declare(mechanism, release_id)
        return ledger

    @classmethod
    def load_json(cls, path: str | os.PathLike) -> "PrivacyLedger":
        """Load a run's ``release/privacy_ledger.json`` (written by
        :func:`dpgd.privacy.summary.ledger_document`: the report plus these format keys)."""
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))


def split_record(record: Mapping[str, Any]) -> tuple[SubsampledGaussian, str | None]:
    """A report's mechanism dict -> (record, its release id or None for older files)."""
    data = dict(record)
    release_id = data.pop("release_id", None)
    return SubsampledGaussian.from_dict(data), release_id
