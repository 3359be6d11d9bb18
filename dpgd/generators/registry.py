"""Generator names -> classes, and the budget's question: what will the generator release?"""

from __future__ import annotations

from dpgd.config import GeneratorConfig
from dpgd.errors import ConfigError
from dpgd.generators.base import PoolGenerator
from dpgd.generators.dp_merf import DpMerf
from dpgd.generators.dp_sgd import DpSgdVae
from dpgd.generators.pe import PrivateEvolution
from dpgd.generators.real import RealPool
from dpgd.privacy.components import PrivacyNeed
from dpgd.tracking import Curve

GENERATORS: dict[str, type[PoolGenerator] | None] = {
    "none": None,
    "real": RealPool,
    "dp_merf": DpMerf,
    "dp_sgd": DpSgdVae,
    "pe": PrivateEvolution,
}
GENERATOR_NAMES = tuple(GENERATORS)


def build_generator(cfg: GeneratorConfig, progress: bool = True, curve: Curve | None = None) -> PoolGenerator | None:
    """The generator ``cfg.name`` names (None for ``none``); settings are checked here."""
    name = cfg.name
    if name not in GENERATORS:
        raise ConfigError(f"generator={name} is unknown; choose one of {', '.join(GENERATOR_NAMES)}.")
    cls = GENERATORS[name]
    return None if cls is None else cls(cfg, progress=progress, curve=curve)


def privacy_request(cfg: GeneratorConfig) -> PrivacyNeed | None:
    """What the configured generator will release (None for ``none``/``real``), before any data."""
    generator = build_generator(cfg, progress=False)
    return None if generator is None else generator.privacy_request()
