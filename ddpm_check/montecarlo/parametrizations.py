"""Check ``parametrizations``: eps-, x_0- and v-prediction convert into each other exactly, and a
network trained briefly on each target reaches that target's Bayes floor on the mixture
(Ho et al. 2020 eqs. 4, 14, 15; Salimans & Ho 2022, sec. 4 and App. D).

**Exact rows** (no alpha; float64 and float32, the dtype the networks train in).  On random x_0,
eps and model outputs (some of them 10 times larger), at every t from 1 to T, the conversions the
torch code uses equal the derivation ``parametrizations``'s lambdified results:

- ``GaussianDiffusion.split_prediction`` for each ``prediction``: eps -> (``x_0_from_eps``, the
  output itself), x0 -> (the output itself, ``eps_from_x_0``), v -> (``x_0_from_v``, ``eps_from_v``);
- ``get_velocity(x_0, eps, t)`` = ``v_from_eps_x_0``;
- ``loss(..., reduction="none")`` for each prediction is the mean squared distance to the target
  it names: eps, x_0, or ``v_from_eps_x_0`` (the model returns a fixed output, so the per-example
  loss is a known function of the target);
- the loss weights (float64): with the code's conversions, the squared errors of the converted
  predictions obey (x_0 - x_0_hat)^2 = ``x0_loss_weight`` (eps - eps_hat)^2 for an x0-network,
  (v - v_theta)^2 = ``v_loss_weight_x0`` (x_0 - x_0_hat)^2 = ``v_loss_weight_eps`` (eps - eps_hat)^2
  for a v-network, element by element.

Each is scored as max |a - b| / (u * scale) with u the unit roundoff of the dtype (2^-53 or 2^-24)
and ``scale`` the sum of the absolute values of the terms (over the coefficient where the formula
divides), as docs/TESTING.md section 1 asks; ``EXACT_BUDGET_ULPS`` is several times the worst seen
with correct code.

**Training rows.**  The same SimpleUnet (the same initial weights, batches, t and noise: one seed)
is trained for the same number of steps on each target (``ddpm_check.montecarlo.network``'s
training, ``GaussianDiffusion(prediction=...)``), then evaluated on one fresh sample of (x_0, t,
eps), paired with the exact predictor of ITS OWN target (``GaussianMixture.predictor``): per
network the tests of the ``network`` check, (1) it does not beat its Bayes floor and (2) the upper
confidence bound of its excess over the floor is at most ``PARAM_REL_TOL`` of the floor, over
all t (see :func:`run` for why not per t bucket).  Diagnostics: each network's excess by t bucket,
on its own target and converted to eps (against the eps floor), which shows the implicit loss
weights: an x0-network's eps error is its x_0 error times SNR(t) = 1/``x0_loss_weight``, large at
small t.
"""

from __future__ import annotations

import numpy as np

from ddpm_check import stats
from ddpm_check.errors import DDPMCheckError
from ddpm_check.montecarlo.context import CheckContext, default_schedule
from ddpm_check.montecarlo.network import (NETWORK_DEFAULTS, NETWORK_MIN_EVAL, bucket_rows, net_outputs,
                                           paired_floor_rows, train_unet)
from ddpm_check.montecarlo.variants import Variant, replace_arrays, swap_symbol


def _v_swapped(name: str, res: dict) -> dict:
    """v defined as sqrt(1 - abar) eps - sqrt(abar) x_0: the two coefficients exchanged."""
    if name != "parametrizations":
        return res
    from derivations import symbols as S

    out = dict(res)
    out["v_from_eps_x_0"] = res["v_from_eps_x_0"].subs(S.alpha_bar_t, 1 - S.alpha_bar_t)
    return out


def _x0_from_v_sign(name: str, res: dict) -> dict:
    """x_0 = sqrt(abar) x_t + sqrt(1 - abar) v: the sign of the v term flipped."""
    if name != "parametrizations":
        return res
    from derivations import symbols as S

    out = dict(res)
    out["x_0_from_v"] = res["x_0_from_v"].subs(S.v, -S.v)
    return out


def _x0_weight_inverted(name: str, res: dict) -> dict:
    """x0_loss_weight = abar/(1 - abar) = SNR(t) instead of 1/SNR(t)."""
    if name != "parametrizations":
        return res
    out = dict(res)
    out["x0_loss_weight"] = 1 / res["x0_loss_weight"]
    return out


def _conversion_alphas(s):
    """The schedule the conversion code receives, with sqrt(alpha_t) and sqrt(1 - alpha_t) where
    sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t) belong."""
    return replace_arrays(s, sqrt_alphas_cumprod=np.sqrt(s.alphas),
                          sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - s.alphas))


VARIANTS = (
    Variant("v_coefficients_swapped",
            "v = sqrt(1 - alpha_bar_t) eps - sqrt(alpha_bar_t) x_0: the coefficients of the definition of v exchanged",
            results=_v_swapped),
    Variant("x0_from_v_wrong_sign",
            "x_0 = sqrt(alpha_bar_t) x_t + sqrt(1 - alpha_bar_t) v: the sign of the v term flipped",
            results=_x0_from_v_sign),
    Variant("x0_from_eps_alpha_for_alpha_bar",
            "x_0 = (x_t - sqrt(1 - alpha_t) eps)/sqrt(alpha_t): alpha_t where alpha_bar_t belongs",
            results=swap_symbol("parametrizations", ("x_0_from_eps",), "alpha_bar_t", "alpha_t")),
    Variant("x0_loss_weight_inverted",
            "x0_loss_weight = alpha_bar_t/(1 - alpha_bar_t) = SNR(t) instead of 1/SNR(t)",
            results=_x0_weight_inverted),
    Variant("conversions_read_alphas",
            "code bug: the conversions read sqrt(alpha_t), sqrt(1 - alpha_t) where sqrt(alpha_bar_t), "
            "sqrt(1 - alpha_bar_t) belong",
            schedule=_conversion_alphas),
    Variant("v_output_read_as_eps",
            "code bug: a v-network's output read as eps (the diffusion that converts it built without prediction='v')",
            sim="v_output_read_as_eps"),
    Variant("v_network_trained_on_eps",
            "code bug: the v-network trained on the eps target (its training diffusion built without "
            "prediction='v'); only the training rows can see it",
            sim="v_network_trained_on_eps"),
)


def _train_steps(value):
    """The ``train_steps`` option: training steps per network, an integer from 0 to 1,000,000
    (0: the exact rows only, no network trained; None: the default)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                              or not 0 <= value <= 1_000_000):
        raise DDPMCheckError(f"parametrizations check train_steps must be an integer from 0 to 1,000,000, "
                             f"got {value!r}")
    return value


#: the options this check takes (Python API: run_check("parametrizations", train_steps=...))
OPTIONS = {"train_steps": _train_steps}

PREDICTIONS = ("eps", "x0", "v")
#: the networks: the network check's data and training, smaller and shorter (three of them train)
PARAM_DEFAULTS = dict(NETWORK_DEFAULTS, steps=600, channels=(16, 32, 64))
#: the declared convergence criterion: excess MSE on the network's own target at most this
#: fraction of that target's Bayes floor (over all t)
PARAM_REL_TOL = 0.10
#: exact rows: worst error allowed in units of roundoff (of the dtype) of each comparison's scale
EXACT_BUDGET_ULPS = 16.0
#: exact rows: points (x_0, eps, output) of EXACT_DIM coordinates; every t at least once; one in
#: LARGE_EVERY of them 10 times larger
EXACT_POINTS, EXACT_DIM, LARGE_EVERY, LARGE = 4096, 4, 8, 10.0
_U64 = stats.UNIT_ROUNDOFF


def _exact(ctx: CheckContext, quantity: str, where: str, source: str, actual, expected, scale, dtype) -> None:
    """An exact row in units of ``dtype``'s roundoff (exact_test counts float64 units: the scale
    is multiplied by u_dtype / u_float64)."""
    import torch

    u = float(torch.finfo(dtype).eps) / 2.0
    ctx.add(quantity, where, source, stats.exact_test(actual, expected, np.asarray(scale) * (u / _U64),
                                                      EXACT_BUDGET_ULPS),
            group=quantity)


def _code_diffusion(ctx: CheckContext, sched, dtype, prediction: str):
    """The diffusion whose conversions are under test (wrong under the code variants)."""
    from ddpm_check.diffusion import GaussianDiffusion

    if ctx.sim == "v_output_read_as_eps" and prediction == "v":
        prediction = "eps"
    return GaussianDiffusion(ctx.code_schedule(sched), dtype=dtype, prediction=prediction)


def exact_rows(ctx: CheckContext, sched, f: dict) -> None:
    """The exact rows (see the module docstring): conversions, get_velocity and loss targets in
    float64 and float32, and the loss weights in float64, on random points at every t."""
    import torch

    g = ctx.generator()
    T = sched.T
    m = max(EXACT_POINTS, T)
    i = torch.randint(0, T, (m,), generator=g)
    i[:T] = torch.arange(T)  # every step, the first and the last included
    x0 = torch.randn(m, EXACT_DIM, generator=g, dtype=torch.float64)
    eps = torch.randn(m, EXACT_DIM, generator=g, dtype=torch.float64)
    out = torch.randn(m, EXACT_DIM, generator=g, dtype=torch.float64)
    x0[::LARGE_EVERY] *= LARGE
    out[1::LARGE_EVERY] *= LARGE
    inn = np.asarray(i)
    kw = {k: np.asarray(a)[:, None] for k, a in ctx.inputs(sched, inn).items()}
    ab = sched.alphas_cumprod[inn][:, None]
    sab, s1m = np.sqrt(ab), np.sqrt(1.0 - ab)
    where = f"t=1..{T}, {m} points x {EXACT_DIM}"

    for dtype in (torch.float64, torch.float32):
        dn = "float64" if dtype == torch.float64 else "float32"
        # the inputs as the code sees them (rounded to dtype), and their float64 values
        x0c, ec, oc = x0.to(dtype), eps.to(dtype), out.to(dtype)
        x0n, en, on = (a.double().numpy() for a in (x0c, ec, oc))
        x_t = (sab * x0n + s1m * en)  # eq. 4 in float64, then rounded to dtype as the code's input
        xtc = torch.as_tensor(x_t).to(dtype)
        xtn = xtc.double().numpy()
        src = f"GaussianDiffusion ({dn}) vs derivation"
        for p in PREDICTIONS:
            diff = _code_diffusion(ctx, sched, dtype, p)
            x0_hat, eps_hat = (a.double().numpy() for a in diff.split_prediction(xtc, i, oc))
            if p == "eps":
                pairs = (("x0_hat", x0_hat, f["x_0_from_eps"](x_t=xtn, eps=on, **kw),
                          (np.abs(xtn) + s1m * np.abs(on)) / sab),
                         ("eps_hat", eps_hat, on, np.abs(on)))
            elif p == "x0":
                pairs = (("x0_hat", x0_hat, on, np.abs(on)),
                         ("eps_hat", eps_hat, f["eps_from_x_0"](x_t=xtn, x_0=on, **kw),
                          (np.abs(xtn) + sab * np.abs(on)) / s1m))
            else:
                pairs = (("x0_hat", x0_hat, f["x_0_from_v"](x_t=xtn, v=on, **kw),
                          sab * np.abs(xtn) + s1m * np.abs(on)),
                         ("eps_hat", eps_hat, f["eps_from_v"](x_t=xtn, v=on, **kw),
                          s1m * np.abs(xtn) + sab * np.abs(on)))
            for what, got, want, scale in pairs:
                _exact(ctx, f"split_prediction[{p}] {what} = derivation", f"{where}, {dn}", src, got,
                       np.asarray(want, dtype=np.float64), scale, dtype)
        # v = sqrt(abar) eps - sqrt(1 - abar) x_0
        v_code = _code_diffusion(ctx, sched, dtype, "v").get_velocity(x0c, ec, i).double().numpy()
        v_want = np.asarray(f["v_from_eps_x_0"](eps=en, x_0=x0n, **kw), dtype=np.float64)
        _exact(ctx, "get_velocity = v_from_eps_x_0", f"{where}, {dn}", src, v_code, v_want,
               sab * np.abs(en) + s1m * np.abs(x0n), dtype)
        # the loss of each prediction: the mean squared distance of the model's output to its target
        for p in PREDICTIONS:
            diff = _code_diffusion(ctx, sched, dtype, p)
            got = diff.loss(lambda x, t: oc, x0c, i, noise=ec, reduction="none").double().numpy()
            if p == "eps":
                target, tscale = en, np.abs(en)
            elif p == "x0":
                target, tscale = x0n, np.abs(x0n)
            else:
                target, tscale = v_want, sab * np.abs(en) + s1m * np.abs(x0n)
            dlt = on - target
            want = (dlt**2).mean(1)
            scale = (2.0 * np.abs(dlt) * (np.abs(on) + tscale) + dlt**2).mean(1)
            _exact(ctx, f"loss[{p}] = mean (output - {'v_from_eps_x_0' if p == 'v' else p})^2",
                   f"{where}, {dn}", src, got, want, 4.0 * scale, dtype)

    # ---- the loss weights (float64): squared errors of the code's conversions of an output
    x_t = sab * x0.numpy() + s1m * eps.numpy()  # eq. 4 (its rounding r enters the scales below)
    xt_t = torch.as_tensor(x_t)
    x0n, en, on = x0.numpy(), eps.numpy(), out.numpy()
    ax0, aen, aon, axt = np.abs(x0n), np.abs(en), np.abs(on), np.abs(x_t)
    r_sz = sab * ax0 + s1m * aen  # |x_t|'s terms: its rounding is a few u of this
    v_true = np.asarray(f["v_from_eps_x_0"](eps=en, x_0=x0n, **kw), dtype=np.float64)
    src = "GaussianDiffusion (float64) vs derivation"

    def weight_row(quantity: str, w, d1, s1, d2, s2):
        """w d1^2 = d2^2, where d1, d2 are differences whose rounding is a few u times s1, s2."""
        w = np.asarray(w, dtype=np.float64)
        lhs, rhs = w * d1**2, d2**2
        scale = np.abs(w) * (2.0 * np.abs(d1) * s1 + d1**2) + 2.0 * np.abs(d2) * s2 + d2**2
        _exact(ctx, quantity, f"{where}, float64", src, lhs, rhs, 4.0 * scale, torch.float64)

    # an x0-network's output converted to eps: (x_0 - x0_theta)^2 = x0_loss_weight (eps - eps_hat)^2
    _, eps_hat = (a.numpy() for a in
                  _code_diffusion(ctx, sched, torch.float64, "x0").split_prediction(xt_t, i, out))
    weight_row("x0_loss_weight (eps - eps_hat)^2 = (x_0 - x0_theta)^2", f["x0_loss_weight"](**kw),
               en - eps_hat, aen + (axt + sab * aon + r_sz) / s1m, x0n - on, ax0 + aon)
    # a v-network's output converted to x_0 and to eps
    x0_hat, eps_hat = (a.numpy() for a in
                       _code_diffusion(ctx, sched, torch.float64, "v").split_prediction(xt_t, i, out))
    sv = np.abs(v_true) + sab * aen + s1m * ax0 + aon
    weight_row("v_loss_weight_x0 (x_0 - x0_hat)^2 = (v - v_theta)^2", f["v_loss_weight_x0"](**kw),
               x0n - x0_hat, ax0 + sab * axt + s1m * aon + sab * r_sz, v_true - on, sv)
    weight_row("v_loss_weight_eps (eps - eps_hat)^2 = (v - v_theta)^2", f["v_loss_weight_eps"](**kw),
               en - eps_hat, aen + sab * aon + s1m * axt + s1m * r_sz, v_true - on, sv)


def run(ctx: CheckContext, train_steps: int | None = None) -> None:
    """The exact rows, then three networks (eps, x0, v) against their own Bayes floors.

    **Training rows.**  Each network is the ``network`` check's SimpleUnet, trained with the same
    seed for the same number of steps (``PARAM_DEFAULTS``; ``train_steps`` replaces the number,
    0 skips the training rows) on its own unweighted L2 loss.  On one fresh sample of n =
    --samples (x_0, t, eps), t uniform, each network's per-example MSE on its target is paired with
    that of the exact predictor of the same target, d = l_net - l_floor, and tested as in the
    ``network`` check (:func:`network.paired_floor_rows`): one-sided z of E[d] >= 0, and the upper
    confidence bound of E[d]/floor at most ``PARAM_REL_TOL``; the standard errors are plug-in
    values from the sample (the variance of d depends on the network).  Six tests.

    The tests are over all t, not per t bucket: a target's floor is small where x_t nearly gives
    it away (x_0 at small t, eps at large t), and there a briefly trained network's excess is a
    large fraction of the floor, because the unweighted loss of that target spends little on those
    t (its implicit weighting), not because a formula is wrong.  Measured at 600 steps (10 buckets,
    n = 8192, a development seed): excess/floor over all t 0.073 (eps), 0.042 (x0), 0.058 (v), but
    per bucket up to 0.53 (eps, t = 271..300, floor 0.009), 1.3 (x0, t = 1..30, floor 0.004) and
    0.25 (v, t = 91..120), so a per-bucket test at 0.1 would fail correct code.  The per-bucket
    excess, on the network's own target and converted to eps, is reported as diagnostics.
    """
    import torch

    from ddpm_check.diffusion import GaussianDiffusion
    from ddpm_check.mixture import image_mixture

    sched = default_schedule(ctx.user_schedule)
    f = ctx.formulas("parametrizations")
    cfg = dict(PARAM_DEFAULTS)
    if train_steps is not None:
        cfg["steps"] = int(train_steps)
    train = cfg["steps"] > 0
    n_eval = ctx.samples
    if train and n_eval < NETWORK_MIN_EVAL:
        raise DDPMCheckError(f"check parametrizations: --samples {n_eval} is too small; "
                             f"use --samples >= {NETWORK_MIN_EVAL}")
    alpha = ctx.set_tests(2 * len(PREDICTIONS) if train else 0)

    exact_rows(ctx, sched, f)
    if not train:
        ctx.notes.append("parametrizations: train_steps = 0: the exact rows only (no network trained)")
        return

    # ---- three networks: one seed, the same steps; only the target differs
    mix = image_mixture(channels=1, size=cfg["size"], n_components=cfg["components"], std=cfg["std"], seed=0)
    shape = (1, cfg["size"], cfg["size"])
    train_seed = stats.seed_for("parametrizations/train", ctx.seed)
    nets, times = {}, {}
    for p in PREDICTIONS:
        trained_on = "eps" if (ctx.sim == "v_network_trained_on_eps" and p == "v") else p
        g = stats.torch_generator(train_seed)
        nets[p], times[p] = train_unet(ctx, sched, mix, cfg, g, prediction=trained_on, label=f"{p}-network")

    # ---- paired evaluation on one fresh sample of (x_0, t, eps)
    g = stats.torch_generator(stats.seed_for("parametrizations/eval", ctx.seed))
    x0 = mix.sample(n_eval, g).reshape(-1, *shape)  # float64
    t = torch.randint(0, sched.T, (n_eval,), generator=g)
    e = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    x_t = GaussianDiffusion(sched, dtype=torch.float64).q_sample(x0, t, noise=e)  # eq. 4, checked by `marginal`
    tn = t.numpy()
    kw = {k: np.asarray(a).reshape(-1, 1, 1, 1) for k, a in ctx.inputs(sched, tn).items()}
    targets = {"eps": e, "x0": x0,
               "v": torch.as_tensor(np.asarray(f["v_from_eps_x_0"](eps=e.numpy(), x_0=x0.numpy(), **kw),
                                               dtype=np.float64))}
    acp = sched.alphas_cumprod

    def per_example(a, b):
        return ((a - b) ** 2).reshape(n_eval, -1).mean(1).numpy()

    l_eps_opt = per_example(e, mix.predictor(acp, "eps")(x_t, t))
    summary = []
    for p in PREDICTIONS:
        out = net_outputs(nets[p], x_t, t)
        l_net = per_example(targets[p], out)
        l_opt = per_example(targets[p], mix.predictor(acp, p)(x_t, t))
        d = l_net - l_opt
        floor, excess, se = paired_floor_rows(
            ctx, d, l_opt, alpha, PARAM_REL_TOL,
            (f"{p}-net MSE >= {p} Bayes floor (paired)", f"{p}-net excess / {p} floor (UCB) <= tol"),
            (f"all t, {cfg['steps']} steps", "all t, floor={floor}"), f"SimpleUnet[{p}] vs exact {p}")
        summary.append(f"{p}: floor {floor:.4f}, excess/floor "
                       + (f"{excess / floor:.3f} +- {se / floor:.3f}" if floor > 0 else "inf"))
        bucket_rows(ctx, d, l_opt, tn, sched.T, alpha, PARAM_REL_TOL, f"{p}-net excess {p}-MSE",
                    f"SimpleUnet[{p}] vs exact {p}",
                    "diagnostic: statistic = excess / floor of its own target in this bucket", label=f"{p} ")
        if p != "eps":  # converted to eps by the code (split_prediction), against the eps floor
            _, eps_hat = _code_diffusion(ctx, sched, torch.float64, p).split_prediction(x_t, t, out)
            d_eps = per_example(e, eps_hat) - l_eps_opt
            bucket_rows(ctx, d_eps, l_eps_opt, tn, sched.T, alpha, PARAM_REL_TOL, f"{p}-net as eps: excess eps-MSE",
                        f"SimpleUnet[{p}] converted vs exact eps",
                        "diagnostic: statistic = excess / eps floor in this bucket (the output converted to eps)",
                        label=f"{p}->eps ")
    ctx.notes.append(
        f"parametrizations: three SimpleUnet {tuple(cfg['channels'])} (one seed) on image_mixture "
        f"1x{cfg['size']}x{cfg['size']} K={cfg['components']} std={cfg['std']}, {cfg['steps']} Adam steps each "
        f"(batch {cfg['batch']}, lr {cfg['lr']}, unweighted L2 on the target) in "
        + ", ".join(f"{p} {times[p]:.1f} s" for p in PREDICTIONS) + "; " + "; ".join(summary))
    ctx.notes.append("parametrizations: per-bucket rows are diagnostics (no alpha): 'finding' = excess above "
                     f"{PARAM_REL_TOL:g} of the floor in that bucket, not a failure")
