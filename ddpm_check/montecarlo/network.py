"""Check ``network``: a trained SimpleUnet approaches the Bayes floor of the exact predictor   (Ho et al. eq. 14).

Train a small SimpleUnet on Gaussian-mixture images with L_simple and compare its eps-MSE with
the Bayes floor of the exact predictor E[eps | x_t] on the same fresh (x_0, t, eps) (paired).
It trains for about a minute on 2 CPU cores, so ``check all`` runs it only with ``--network``.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict

import numpy as np

from ddpm_check import stats
from ddpm_check.errors import DDPMCheckError
from ddpm_check.montecarlo.context import CheckContext, default_schedule
from ddpm_check.montecarlo.results import ROLE_DIAGNOSTIC
from ddpm_check.montecarlo.variants import Variant

VARIANTS = (
    Variant("floor_alpha_for_alpha_bar",
            "the 'Bayes floor' computed with a predictor told alpha_t where alpha_bar_t belongs "
            "(a wrong floor the trained network beats)",
            sim="floor_alphas"),
    Variant("floor_sqrt_alpha_bar",
            "the 'Bayes floor' computed with sqrt(alpha_bar_t) where alpha_bar_t belongs "
            "(sqrt_alphas_cumprod passed for alphas_cumprod)",
            sim="floor_sqrt"),
    Variant("floor_data_std_doubled",
            "the 'Bayes floor' of a wrong data model (component std 0.2 instead of 0.1)",
            sim="floor_std"),
)


def _steps(value):
    """The ``steps`` option: training steps, an integer from 1 to 1,000,000 (None: the default)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                              or not 1 <= value <= 1_000_000):
        raise DDPMCheckError(f"network check steps must be an integer from 1 to 1,000,000, got {value!r}")
    return value


#: the options this check takes, each with its validator (run_check refuses any other)
OPTIONS = {"steps": _steps}

NETWORK_DEFAULTS = dict(steps=1500, batch=128, lr=2e-3, size=8, components=4, std=0.1,
                        channels=(16, 32, 64))
NETWORK_BUCKETS = 5
NETWORK_MIN_EVAL = 1024
#: trained networks of this process by (seed, config, schedule, prediction, generator state); at
#: most _NET_CACHE_SIZE of them (the parametrizations check trains three)
_NET_CACHE: "OrderedDict[tuple, tuple]" = OrderedDict()
_NET_CACHE_SIZE = 4
#: the declared convergence criterion: excess eps-MSE at most this fraction of the floor
NETWORK_REL_TOL = 0.10


def train_unet(ctx: CheckContext, sched, mix, cfg: dict, g, prediction: str = "eps", label: str = "network"):
    """A SimpleUnet (down channels ``cfg['channels']``, time embedding 32) trained with Adam
    (``cfg['lr']``, cosine decay) for ``cfg['steps']`` steps of ``cfg['batch']`` images of ``mix``
    on the unweighted L2 loss of ``prediction`` (eps: L_simple, eq. 14; x0 or v: the same loss on
    that target, ``GaussianDiffusion(prediction=...)``), in float32.  The initial weights come from
    ``ctx.seed``; the batches, t and noise from the torch generator ``g``, which is left as training
    leaves it.  Returns (the network in eval mode, the training time in seconds).

    Training is deterministic given the seed, so a trained network is reused (this process only)
    when the same training runs again, e.g. for a check's wrong variants, which change what it is
    compared with: the cache key holds the seed, ``cfg``, the schedule, ``prediction`` and g's state.
    """
    import torch

    from ddpm_check.diffusion import GaussianDiffusion
    from ddpm_check.unet import SimpleUnet, UNetConfig

    shape = (1, cfg["size"], cfg["size"])
    unet_cfg = UNetConfig(image_channels=1, down_channels=tuple(cfg["channels"]), time_emb_dim=32)
    with torch.random.fork_rng():  # the initial weights from the check's seed; global RNG untouched
        torch.manual_seed(ctx.seed % (2**63))
        net = SimpleUnet(unet_cfg)
    g_state = g.get_state()
    key = (ctx.seed, tuple(sorted((k, str(v)) for k, v in cfg.items())), sched.betas.tobytes(), prediction,
           hashlib.sha256(g_state.numpy().tobytes()).hexdigest())
    if key in _NET_CACHE:
        state, g_after, train_s = _NET_CACHE[key]
        _NET_CACHE.move_to_end(key)
        net.load_state_dict(state)
        g.set_state(g_after)
    else:
        diffusion = GaussianDiffusion(sched, dtype=torch.float32, prediction=prediction)
        opt = torch.optim.Adam(net.parameters(), lr=cfg["lr"])
        sched_lr = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg["steps"], 1))
        net.train()
        t0 = time.time()
        for step in range(cfg["steps"]):
            x0 = mix.sample(cfg["batch"], g, dtype=torch.float32).reshape(-1, *shape)
            loss = diffusion.loss(net, x0, kind="l2", generator=g)  # L_simple (eq. 14) on the named target
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched_lr.step()
            if step % 100 == 0:
                ctx.say(f"{label}: step {step}/{cfg['steps']} loss {loss.item():.4f}")
        train_s = time.time() - t0
        _NET_CACHE[key] = ({k: v.detach().clone() for k, v in net.state_dict().items()}, g.get_state(), train_s)
        while len(_NET_CACHE) > _NET_CACHE_SIZE:
            _NET_CACHE.popitem(last=False)
    net.eval()
    return net, train_s


def net_outputs(net, x_t, t, chunk: int = 1024):
    """The network's outputs at (x_t, t) in float32 chunks, returned in float64 (no gradients)."""
    import torch

    with torch.no_grad():
        return torch.cat([net(x_t[k:k + chunk].float(), t[k:k + chunk]).double()
                          for k in range(0, x_t.shape[0], chunk)])


def t_buckets(T: int, k: int = NETWORK_BUCKETS) -> list[tuple[int, int]]:
    """k equal buckets of 0-based steps [lo, hi) covering 0..T-1 (paper t = lo + 1 .. hi)."""
    edges = np.linspace(0, T, k + 1).astype(int)
    return list(zip(edges[:-1].tolist(), edges[1:].tolist()))


def paired_floor_rows(ctx: CheckContext, d: np.ndarray, l_opt: np.ndarray, alpha: float, tol: float,
                      quantities: tuple[str, str], where: tuple[str, str], source: str, group: str = ""):
    """The two tests of a network against the Bayes floor on paired per-example losses
    (d = network loss - floor loss on the same (x_0, t, eps), l_opt = the floor's loss):

    (1) the network does not beat the floor: one-sided paired z of H0 E[d] >= 0 (exact: the floor
    is the conditional mean given x_t, so E[d] = E||net - floor||^2 / D >= 0), statistic
    max(0, -dbar/se) against z_{1-alpha};
    (2) convergence: the upper confidence bound (dbar + z_{1-alpha} se)/floor at most ``tol``.
    se is a plug-in value from the sample (the variance of d depends on the network).
    Returns (floor, excess, se).  ``where[1]`` may hold ``{floor}``, filled in here.
    """
    n = int(d.size)
    se = float(d.std(ddof=1) / math.sqrt(n))
    floor = float(l_opt.mean())
    excess = float(d.mean())
    z1 = stats.z_one_sided(alpha)
    zb = stats.z_one_sided(stats.BETA)
    # (1) one-sided: H0 E[d] >= 0; statistic max(0, -dbar/se)
    stat1 = max(0.0, -excess / se) if se > 0 else (math.inf if excess < 0 else 0.0)
    ctx.add(quantities[0], where[0], source,
            stats.TestOutcome("paired-z", excess, 0.0, se, stat1, z1, alpha, (z1 + zb) * se, n), group=group)
    # (2) convergence: the upper confidence bound of excess / floor within the declared tolerance
    if floor > 0:
        ucb, rel, se_rel, delta_rel = (excess + z1 * se) / floor, excess / floor, se / floor, (z1 + zb) * se / floor
    else:  # the target is known from x_t: any excess is infinitely many floors
        ucb = rel = math.inf if excess + z1 * se > 0 else 0.0
        se_rel, delta_rel = math.inf, math.inf
    ctx.add(quantities[1], where[1].format(floor=f"{floor:.4f}"), source,
            stats.TestOutcome("ucb", rel, 0.0, se_rel, ucb, tol, alpha, delta_rel, n), group=group)
    return floor, excess, se


def bucket_rows(ctx: CheckContext, d: np.ndarray, l_opt: np.ndarray, t: np.ndarray, T: int, alpha: float,
                tol: float, quantity: str, source: str, note: str, label: str = "") -> None:
    """Diagnostics (no alpha spent): the mean excess d by t bucket, statistic = excess / floor in
    the bucket against ``tol`` (a finding above it); ``t`` holds the 0-based steps of the examples."""
    z1 = stats.z_one_sided(alpha)
    zb = stats.z_one_sided(stats.BETA)
    for lo, hi in t_buckets(T):
        m = (t >= lo) & (t < hi)
        if m.sum() < 2:
            continue
        db = d[m]
        se_b = float(db.std(ddof=1) / math.sqrt(m.sum()))
        fl = float(l_opt[m].mean())
        ctx.add(quantity, f"{label}t={lo + 1}..{hi} floor={fl:.4f}", source,
                stats.TestOutcome("bucket", float(db.mean()), 0.0, se_b,
                                  float(db.mean()) / fl if fl > 0 else math.inf,  # floor 0: target known from x_t
                                  tol, alpha, (z1 + zb) * se_b, int(m.sum())), role=ROLE_DIAGNOSTIC,
                note=note, group=f"{label}t={lo + 1}..{hi}")


def run(ctx: CheckContext, steps: int | None = None) -> None:
    """Train a SimpleUnet (down channels (16, 32, 64): smaller than UNetConfig.small, for a
    2-core CPU) on image_mixture data with L_simple (eq. 14) and
    compare, on fresh (x_0, t, eps), its per-example eps-MSE with that of the exact predictor.

    Tests: (1) the network does not beat the Bayes floor: mean paired difference >= 0 (one-sided
    z; E[d] = E||eps_theta - eps*||^2 / D >= 0 exactly, so a 'floor' the network beats is wrong);
    (2) convergence: the excess over the floor is at most NETWORK_REL_TOL of the floor (upper
    confidence bound).  Diagnostics: the excess loss by t bucket.

    The variance of the paired difference depends on the trained network, so unlike the other
    checks the standard errors and the detectable delta are plug-in values from the evaluation
    sample (n = --samples, >= NETWORK_MIN_EVAL), not known before sampling.
    """
    import torch

    from ddpm_check.diffusion import GaussianDiffusion
    from ddpm_check.mixture import ExactEpsPredictor, GaussianMixture, image_mixture

    cfg = dict(NETWORK_DEFAULTS)
    if steps is not None:
        cfg["steps"] = int(steps)
    sched = default_schedule(ctx.user_schedule)
    mix = image_mixture(channels=1, size=cfg["size"], n_components=cfg["components"], std=cfg["std"], seed=0)
    n_eval = ctx.samples
    alpha = ctx.set_tests(2)
    shape = (1, cfg["size"], cfg["size"])

    if n_eval < NETWORK_MIN_EVAL:
        raise DDPMCheckError(f"check network: --samples {n_eval} is too small; use --samples >= {NETWORK_MIN_EVAL}")
    g = ctx.generator()
    net, train_s = train_unet(ctx, sched, mix, cfg, g)

    # ---- paired evaluation on fresh (x_0, t, eps)
    if ctx.sim == "floor_alphas":
        floor_pred = ExactEpsPredictor(mix, sched.alphas)
    elif ctx.sim == "floor_sqrt":
        floor_pred = ExactEpsPredictor(mix, sched.sqrt_alphas_cumprod)
    elif ctx.sim == "floor_std":
        floor_pred = GaussianMixture(mix.weights, mix.means, 2.0 * mix.stds).eps_predictor(sched.alphas_cumprod)
    else:
        floor_pred = mix.eps_predictor(sched.alphas_cumprod)
    x0 = mix.sample(n_eval, g).reshape(-1, *shape)  # float64
    t = torch.randint(0, sched.T, (n_eval,), generator=g)
    e = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    x_t = GaussianDiffusion(sched, dtype=torch.float64).q_sample(x0, t, noise=e)  # eq. 4, checked by `marginal`
    pred_net = net_outputs(net, x_t, t)
    pred_opt = floor_pred(x_t, t)
    l_net = ((e - pred_net) ** 2).reshape(n_eval, -1).mean(1).numpy()
    l_opt = ((e - pred_opt) ** 2).reshape(n_eval, -1).mean(1).numpy()
    d = l_net - l_opt
    floor, excess, se = paired_floor_rows(
        ctx, d, l_opt, alpha, NETWORK_REL_TOL,
        ("net MSE >= Bayes floor (paired)", "excess / floor (UCB) <= tol"),
        (f"all t, {cfg['steps']} steps", "all t, floor={floor}"), "SimpleUnet vs exact")
    # diagnostics: excess by t bucket
    bucket_rows(ctx, d, l_opt, t.numpy(), sched.T, alpha, NETWORK_REL_TOL, "excess eps-MSE", "SimpleUnet vs exact",
                "statistic = excess / floor in this bucket; finding = above the overall tolerance")
    ctx.notes.append(
        f"network: SimpleUnet {tuple(cfg['channels'])}, image_mixture 1x{cfg['size']}x{cfg['size']} "
        f"K={cfg['components']} std={cfg['std']}, {cfg['steps']} Adam steps (batch {cfg['batch']}, lr {cfg['lr']}, "
        f"L2 = eq. 14) in {train_s:.1f} s; floor {floor:.4f}, excess {excess:.5f} +- {se:.5f}")
