"""The network check's fast smoke runs (its full run and its wrong variants are the contract
tests, marked slow: training to convergence takes about a minute)."""

import json

from ddpm_check import montecarlo as mc
from ddpm_check.montecarlo import network
from ddpm_check.schedules import ScheduleConfig

#: "statistic > several x threshold", as in the contract tests
MIN_MARGIN = 3.0


def test_network_smoke_runs_and_reports():
    res = mc.run_check("network", steps=20, samples=1024)
    quantities = [r.quantity for r in res.rows]
    assert quantities[:2] == ["net MSE >= Bayes floor (paired)", "excess / floor (UCB) <= tol"]
    buckets = [r for r in res.rows if r.role == "diagnostic"]
    assert len(buckets) == network.NETWORK_BUCKETS and all(r.se > 0 for r in buckets)
    # the excess of an (under-trained) network over the exact floor is positive
    assert res.rows[0].estimate > 0 and res.rows[0].passed
    assert any("Adam steps" in n for n in res.notes)
    json.dumps(res.to_dict(), allow_nan=False)


def test_network_wrong_floor_is_beaten_even_by_a_smoke_run():
    res = mc.run_check("network", steps=20, samples=1024, variant="floor_alpha_for_alpha_bar")
    assert not res.rows[0].passed and res.rows[0].margin > MIN_MARGIN


def test_network_check_survives_a_bucket_whose_bayes_floor_is_zero():
    # betas 0.5..0.6: alpha_bar_t ~ 1e-105 late on, where eps is known from x_t and the exact
    # denoiser's loss is 0; the per-bucket ratio excess / floor divided by zero
    res = mc.run_check("network", steps=3, schedule=ScheduleConfig(beta_start=0.5, beta_end=0.6))
    buckets = [r for r in res.rows if r.quantity == "excess eps-MSE"]
    assert any(r.statistic == float("inf") for r in buckets)  # a bucket with floor exactly 0
    assert all(r.role == "diagnostic" for r in buckets)
