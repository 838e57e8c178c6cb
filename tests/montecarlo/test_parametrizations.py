"""The parametrizations check: its exact rows and the wrong variants they reject (fast, no
training: ``train_steps=0``), its options, a smoke run of the training rows, and (slow) which rows
catch the training-only variant.  The full run and every variant are the contract tests (slow)."""

import json

import numpy as np
import pytest

from ddpm_check import montecarlo as mc
from ddpm_check.errors import DDPMCheckError
from ddpm_check.montecarlo import parametrizations as P

#: "statistic > several x threshold", as in the contract tests
MIN_MARGIN = 3.0
TRAINING_ONLY = ("v_network_trained_on_eps",)
EXACT_VARIANTS = [v for v in mc.CHECKS["parametrizations"].variants if v not in TRAINING_ONLY]


@pytest.fixture(scope="module")
def exact_only():
    return mc.run_check("parametrizations", train_steps=0)


def test_exact_rows_cover_every_conversion_loss_target_and_weight(exact_only):
    res = exact_only
    assert res.passed and res.derivations == ("parametrizations",)
    qs = [r.quantity for r in res.rows]
    for p in ("eps", "x0", "v"):
        for what in ("x0_hat", "eps_hat"):
            # one row per dtype: float64, and float32 (what the networks train in)
            assert qs.count(f"split_prediction[{p}] {what} = derivation") == 2
    assert qs.count("get_velocity = v_from_eps_x_0") == 2
    assert qs.count("loss[v] = mean (output - v_from_eps_x_0)^2") == 2
    assert qs.count("loss[eps] = mean (output - eps)^2") == qs.count("loss[x0] = mean (output - x0)^2") == 2
    for w in ("x0_loss_weight", "v_loss_weight_x0", "v_loss_weight_eps"):
        assert sum(q.startswith(w) for q in qs) == 1
    assert len(res.rows) == 23
    assert all(r.kind == "exact" and r.alpha == 0 and r.role == "test" for r in res.rows)
    # every t from the first to the last (T = 300 by default)
    assert all(r.where.startswith("t=1..300,") for r in res.rows)
    assert {r.where.rsplit(", ", 1)[1] for r in res.rows} == {"float64", "float32"}
    assert all(r.statistic <= r.threshold == P.EXACT_BUDGET_ULPS for r in res.rows)
    assert res.alpha_spent == 0
    assert any("exact rows only" in n for n in res.notes)
    json.dumps(res.to_dict(), allow_nan=False)


@pytest.mark.parametrize("variant", EXACT_VARIANTS)
def test_exact_rows_alone_reject_the_formula_and_conversion_variants(variant):
    res = mc.run_check("parametrizations", train_steps=0, variant=variant)
    assert not res.passed
    assert res.worst.kind == "exact" and res.worst.margin > MIN_MARGIN


def test_the_training_only_variant_is_invisible_to_the_exact_rows():
    # a v-network trained on the eps target: the conversions are right, so only the training rows
    # (slow, below) can reject it; this is why the check trains networks at all
    assert mc.run_check("parametrizations", train_steps=0, variant="v_network_trained_on_eps").passed


@pytest.mark.parametrize("scale", [1 + 2**-30, 1 - 2**-30])
def test_exact_rows_catch_a_conversion_off_by_one_part_in_a_billion(monkeypatch, scale):
    from ddpm_check.diffusion import GaussianDiffusion

    real = GaussianDiffusion.split_prediction

    def off(self, x_t, t, out):
        x0_hat, eps_hat = real(self, x_t, t, out)
        return x0_hat, eps_hat * scale if self.prediction == "v" else eps_hat

    monkeypatch.setattr(GaussianDiffusion, "split_prediction", off)
    res = mc.run_check("parametrizations", train_steps=0)
    bad = [r for r in res.failures]
    assert bad and {r.quantity for r in bad} >= {"split_prediction[v] eps_hat = derivation"}
    # float32 rounds a 1e-9 error away; float64 cannot
    assert all(r.where.endswith("float64") for r in bad if r.quantity.startswith("split_prediction"))


@pytest.mark.parametrize("value", [-1, 1.5, True, "10", 10**7])
def test_bad_train_steps_are_refused_in_one_line(value):
    with pytest.raises(DDPMCheckError, match="train_steps must be an integer from 0 to 1,000,000"):
        mc.run_check("parametrizations", train_steps=value)


def test_the_network_checks_steps_option_is_refused():
    with pytest.raises(DDPMCheckError, match="takes no option steps .only the network check takes steps"):
        mc.run_check("parametrizations", steps=10)


def test_too_few_evaluation_samples_are_refused_before_training():
    with pytest.raises(DDPMCheckError, match="--samples 100 is too small; use --samples >= 1024"):
        mc.run_check("parametrizations", samples=100, train_steps=5)


def test_training_smoke_run_reports_six_tests_and_the_buckets():
    res = mc.run_check("parametrizations", train_steps=3, samples=1024)
    stat = [r for r in res.rows if r.kind != "exact"]
    tests = [r for r in stat if r.role == "test"]
    assert [r.quantity for r in tests] == [
        f"{p}-net {q}" for p in ("eps", "x0", "v")
        for q in (f"MSE >= {p} Bayes floor (paired)", f"excess / {p} floor (UCB) <= tol")]
    assert len({r.alpha for r in tests}) == 1 and res.alpha_spent <= res.alpha_check
    diags = [r for r in stat if r.role == "diagnostic"]
    assert len(diags) == 5 * (3 + 2)  # five t buckets: each network on its own target, x0 and v as eps
    assert all(r.se > 0 and r.n >= 2 for r in diags)
    # three steps of training: no network beats its floor, none is near it (the UCB rows reject)
    floors = tests[0::2]
    ucbs = tests[1::2]
    assert all(r.passed and r.estimate > 0 for r in floors)
    assert all(not r.passed and r.margin > MIN_MARGIN for r in ucbs)
    assert any("3 Adam steps each" in n for n in res.notes)
    json.dumps(res.to_dict(), allow_nan=False)


def test_the_three_networks_start_alike_and_see_the_same_batches():
    """One seed for all three: with no training step the three networks are the same function."""
    import torch

    from ddpm_check import stats
    from ddpm_check.mixture import image_mixture
    from ddpm_check.montecarlo.context import CheckContext, default_schedule
    from ddpm_check.montecarlo.network import train_unet

    ctx = CheckContext("parametrizations", "", 1024, 1, None, None, n_checks=len(mc.CHECKS))
    cfg = dict(P.PARAM_DEFAULTS, steps=0)
    mix = image_mixture(size=cfg["size"])
    x = torch.randn(4, 1, cfg["size"], cfg["size"])
    t = torch.tensor([0, 10, 100, 299])
    outs = []
    for p in P.PREDICTIONS:
        net, _ = train_unet(ctx, default_schedule(None), mix, cfg, stats.torch_generator(7), prediction=p)
        with torch.no_grad():
            outs.append(net(x, t).numpy())
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])


@pytest.mark.slow
def test_the_training_only_variant_is_rejected_by_the_v_networks_rows(checked):
    res = checked("parametrizations", "v_network_trained_on_eps")
    bad = res.failures
    assert bad and all(r.quantity.startswith("v-net") for r in bad)
    assert max(r.margin for r in bad) > MIN_MARGIN


@pytest.mark.slow
def test_an_x0_networks_eps_error_is_largest_at_small_t(checked):
    """The implicit weights: converted to eps, an x0-network's error is its x_0 error times
    SNR(t), so relative to the eps floor it is worst in the first t bucket; the eps-network's is not."""
    res = checked("parametrizations")
    x0_as_eps = [r for r in res.rows if r.quantity == "x0-net as eps: excess eps-MSE"]
    assert len(x0_as_eps) == 5 and all(r.role == "diagnostic" for r in x0_as_eps)
    assert x0_as_eps[0].statistic == max(r.statistic for r in x0_as_eps)
