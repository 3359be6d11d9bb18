"""Membership-inference evaluation of the release pipeline (the ``mia`` group).

``dpgd.mia.stage.run_attack`` is the stage ``train.run`` calls. This package's import is
kept light (only the schema) because :mod:`dpgd.config` imports :class:`MiaConfig` from it
and the stage imports the pipeline, which imports the config.

Modules: ``settings`` (schema), ``metrics`` (ROC numbers), ``lira`` and ``loss_attack``
(scores), ``design`` (population and membership), ``shadows`` (parallel, cached
pipeline runs), ``plot`` (the ROC figure), ``stage`` (orchestration, results, logging).
"""

from dpgd.mia.settings import MIA_NAMES, MiaConfig

__all__ = ["MIA_NAMES", "MiaConfig"]
