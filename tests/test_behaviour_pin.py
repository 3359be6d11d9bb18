"""Refactors must not change the method: pinned results of two tiny digits runs.

With ``reproducible_noise=true`` (noise from the public seed: deterministic, NOT DP) and one
torch thread, a run on this machine is bit-for-bit repeatable, so the test accuracy of each
evaluation model, the released counts and the ledger are pinned. A change that alters them
changes what the method computes: rerun and update the pins only when that is intended, and
say in the commit what changed and why.
"""

from __future__ import annotations

import pytest

import dpgd.train as train

PIN = ["logger=none", "reproducible_noise=true", "evaluation.epochs=20", "evaluation.runs=2", "matcher.iterations=20",
       "generator.dp_merf.steps=30", "generator.cache=false", "pool_nets.cache=false", "pool_nets.count=2",
       "pool_nets.epochs=3", "expert.steps=10", "generator.pool_per_class=40", "expert.reference_per_class=20",
       "selection.epochs=20"]

# Each pinned case: the overrides after PIN. "dpgeng_no_selection" pins DP-GenG's code paths
# with the DP selection switched off.
CASES = {
    "dpgeng": ["experiment=dpgeng"],
    "dpgeng_no_selection": ["experiment=dpgeng", "selection=none"],
    "ndpdc": ["experiment=ndpdc"],
}

EXPECTED = {
    "dpgeng": {
        "acc": [64.72222222222223, 59.44444444444444],
        "counts": [135, 134, 142, 122, 125, 133, 141, 156, 153, 175],
        "mechanisms": [("counts", 17.25304890530388, 1.0, 1), ("generator", 4.837945568459692, 1.0, 1),
                       ("expert", 2.3381838490569247, 0.05, 10), ("matcher", 3.8396161566486016, 0.1, 20),
                       ("selection", 17.25304890530388, 1.0, 1)],
        "epsilon": 0.9894349601553809,
        "stages": {"generate": {"pool_size": 400, "pool_test_acc": 20.555555555555557},
                   "expert": {"test_acc": 31.11111111111111, "finetune": "head",
                              "noise_to_signal_all": 12.98139285243236, "noise_to_signal_head": 2.365414752078693},
                   "match": {"iterations": 20, "sample_rate": 0.1, "information": 0.5373593209987643,
                             "snr_bound": 0.16298110485076905, "snr": 0.14502731561660767},
                   "select": {"iterations": [0, 20], "noisy_gain": [0.0, 20.08], "chosen_iteration": 20,
                              "gain_noise_std": 17.25304890530388}},
    },
    "dpgeng_no_selection": {
        "acc": [66.11111111111111, 59.72222222222222],
        "counts": [134, 133, 142, 120, 123, 132, 141, 157, 154, 178],
        "mechanisms": [("counts", 18.661212214586484, 1.0, 1), ("generator", 4.697639128970268, 1.0, 1),
                       ("expert", 2.289361860630768, 0.05, 10), ("matcher", 3.7408850961835025, 0.1, 20)],
        "epsilon": 0.9893448612622769,
        "stages": {"generate": {"pool_size": 400, "pool_test_acc": 20.555555555555557},
                   "expert": {"test_acc": 30.833333333333332, "finetune": "head",
                              "noise_to_signal_all": 12.725749034932862, "noise_to_signal_head": 2.318832411950398},
                   "match": {"iterations": 20, "sample_rate": 0.1, "information": 0.56590339125568,
                             "snr_bound": 0.16707993745803834, "snr": 0.14788212776184081}},
    },
    "ndpdc": {
        "acc": [56.94444444444444, 61.94444444444444],
        "counts": [130, 126, 142, 107, 112, 125, 139, 164, 161, 196],
        "mechanisms": [("counts", 28.43703700715638, 1.0, 1), ("matcher", 2.13129256364687, 0.1, 20)],
        "epsilon": 0.9885346417210629,
        "stages": {"match": {"iterations": 20, "sample_rate": 0.1, "information": 1.747679977670107,
                             "snr_bound": 0.2907933950424194, "snr": 0.26977660655975344}},
    },
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_pinned_tiny_run(case, compose, tmp_path, one_torch_thread):
    results = train.run(compose(*PIN, *CASES[case]), tmp_path).results
    expected = EXPECTED[case]
    mechanisms = [(m["component"], m["noise_multiplier"], m["sample_rate"], m["steps"])
                  for m in results["privacy"]["mechanisms"]]
    assert [m[0] for m in mechanisms] == [m[0] for m in expected["mechanisms"]]
    for got, want in zip(mechanisms, expected["mechanisms"]):
        assert got[1:] == pytest.approx(want[1:], rel=1e-9)
    assert results["privacy"]["epsilon"] == pytest.approx(expected["epsilon"], rel=1e-9)
    assert results["class_counts"]["per_class"] == expected["counts"]
    assert results["test_acc_runs"] == pytest.approx(expected["acc"], abs=1e-9)
    assert set(results["stages"]) == set(expected["stages"])
    for stage, values in expected["stages"].items():
        assert set(results["stages"][stage]) == set(values)
        for key, want in values.items():  # approx compares no lists nested in a dict
            assert results["stages"][stage][key] == (want if isinstance(want, str) else pytest.approx(want, abs=1e-9))
