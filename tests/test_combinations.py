"""Every combination of the method's groups x {finite, inf} epsilon is judged before data.

For each combination, the static checks and the privacy plan (everything ``train.run`` does
before ``load_dataset``) either accept it or refuse it with a one-line user error, within
seconds; and a covering sample of the accepted ones (every option of every group, at
each epsilon) runs end to end at tiny sizes, so no combination reaches a stage only to be
refused there (generator=pe needs a public folder and is refused without one).
"""

from __future__ import annotations

import itertools
import time

import pytest

from dpgd.budget import plan_run
from dpgd.config import typed
from dpgd.errors import DpgdError
from dpgd.mia.stage import check_mia_settings
from dpgd.validation import check_config

GROUPS = {
    "generator": ("dp_merf", "dp_sgd", "pe", "none", "real"),
    "init": ("kmeans", "random_pool", "noise", "real"),
    "matcher": ("dp_feature", "dm", "none"),
    "expert": ("dp_sgd", "pool", "none"),
}


def judge(compose, overrides: list[str]) -> str | None:
    """None when accepted, else the refusal's message."""
    cfg = typed(compose("logger=none", *overrides))
    try:
        check_config(cfg)
        check_mia_settings(cfg)
        plan_run(cfg)
    except DpgdError as err:
        return str(err)
    return None


@pytest.mark.slow
def test_every_combination_is_judged_before_data(compose):
    accepted, refused = 0, 0
    for epsilon in ("1", "inf"):
        for values in itertools.product(*GROUPS.values()):
            overrides = [f"{group}={value}" for group, value in zip(GROUPS, values)] + [f"epsilon={epsilon}"]
            started = time.perf_counter()
            message = judge(compose, overrides)
            assert time.perf_counter() - started < 10, overrides
            if message is None:
                accepted += 1
            else:
                refused += 1
                assert "\n" not in message and message.strip(), (overrides, message)
    assert accepted > 20 and refused > 20  # both kinds occur: the judge is not trivially one-sided


def test_known_combinations(compose):
    assert judge(compose, ["epsilon=inf"]) is None  # DP-GenG's own non-private upper bound
    assert "epsilon=inf" in judge(compose, ["init=real"])
    assert "needs a generated pool" in judge(compose, ["generator=none", "init=noise", "expert=none",
                                                        "budget=ndpdc"])
    assert "noise_schedule.kind" in judge(compose, ["epsilon=inf", "matcher.noise_schedule.kind=cosine"])
    assert "matcher.extractors=pool_trained" in judge(compose, ["experiment=ndpdc", "matcher.release=once"])
    assert "matcher.release=twice is unknown" in judge(compose, ["matcher.release=twice"])
    assert "matcher.embedding=mean is unknown" in judge(compose, ["epsilon=inf", "matcher.embedding=mean"])
    assert judge(compose, ["matcher.release=once", "matcher.embedding=pooled", "expert=pool"]) is None


def covering_accepted(compose, epsilon: str) -> list[list[str]]:
    """Accepted combinations, picked greedily until every option of every group that some
    accepted combination uses appears in at least one of them."""
    accepted = []
    for values in itertools.product(*GROUPS.values()):
        overrides = [f"{group}={value}" for group, value in zip(GROUPS, values)] + [f"epsilon={epsilon}"]
        if judge(compose, overrides) is None:
            accepted.append(overrides)
    uncovered = {option for overrides in accepted for option in overrides}
    picked = []
    while uncovered:
        best = max(accepted, key=lambda overrides: len(uncovered.intersection(overrides)))
        picked.append(best)
        uncovered -= set(best)
    return picked


@pytest.mark.slow
@pytest.mark.parametrize("epsilon", ["1", "inf"])
def test_accepted_combinations_run_end_to_end(compose, epsilon, tmp_path, one_torch_thread):
    """The other half of the contract: what the judge accepts runs through every stage (tiny
    sizes), so no stage refuses a combination the checks let through."""
    import dpgd.train as train

    picked = covering_accepted(compose, epsilon)
    assert len(picked) >= 3
    for number, overrides in enumerate(picked):
        result = train.run(compose("debug=tiny", "logger=none", "resume=false", "generator.cache=false",
                                   "generator.pe.rounds=1", *overrides), tmp_path / str(number))
        assert result.results["test_acc_mean"] >= 0, overrides
        assert result.results["privacy"]["dp"] is (epsilon != "inf"), overrides
