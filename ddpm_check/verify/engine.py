"""The verification engine: each capability a target provides gets its rows (see :mod:`ddpm_check.verify`).

Expected values come from the sympy results (``derivations.numeric``: ``marginal``, ``mean-eps``,
``posterior``) and the schedule definitions (``derivations.schedule_definitions``), evaluated in
float64 on the target's own betas; nothing is retyped here.  Exact rows compare up to a budget of
units of roundoff of the lowest precision involved (the inputs fed, the arrays the target stores);
statistical rows share the family-wise false-failure level ``stats.ALPHA_FW`` among the rows
actually run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ddpm_check import stats
from ddpm_check.montecarlo.context import CheckContext
from ddpm_check.montecarlo.results import ROLE_DIAGNOSTIC, CheckResult
from ddpm_check.verify.targets import CAPABILITIES, Target, TargetError

#: budgets of the exact rows, in units of roundoff of the precision involved
BUDGET = {"schedule": 8.0, "forward": 16.0, "step": 64.0}
#: a stored sqrt(1 - alpha_bar_t) (or any coefficient) may be off by this much, relatively, and pass
#: (float32 storage is 6e-4 off at t = 1 with beta_1 = 1e-4; float16 loses the step altogether)
COEF_REL_TOL = 1e-2
#: pixels per image in the step rows (8 x 8), and images per t in the forward and loss rows
STEP_SHAPE = (1, 8, 8)
FORWARD_PER_T = 8
DEFAULT_SAMPLES = 16_384  # values per t in the step rows' variance tests
SAMPLER_SHAPE = (32, 1, 8, 8)
#: the dtype of the tensors fed to a target: float32, as models and samplers run (a float64 target
#: promotes them; the exact rows' budgets use float32's roundoff at least)
INPUT_DTYPE = torch.float32


def unit_roundoff(dtype: str) -> float:
    """u of a dtype name ("float32", "torch.float16", "float64", ints: float64's)."""
    name = str(dtype).replace("torch.", "")
    if name in ("float16", "half"):
        return 2.0**-11
    if name in ("bfloat16",):
        return 2.0**-8
    if name in ("float32", "float"):
        return 2.0**-24
    return 2.0**-53


@dataclass
class Reference:
    """The float64 schedule the target is held to, from its own betas (or alphas_cumprod)."""

    betas: np.ndarray
    alphas: np.ndarray
    alphas_cumprod: np.ndarray
    alphas_cumprod_prev: np.ndarray

    @classmethod
    def of(cls, tgt: Target) -> "Reference":
        if tgt.betas is not None:
            b = np.asarray(tgt.betas, dtype=np.float64)
            a = 1.0 - b
            ab = np.cumprod(a)
        else:
            ab = np.asarray(tgt.alphas_cumprod, dtype=np.float64)
            prev = np.concatenate([[1.0], ab[:-1]])
            a = ab / prev
            b = 1.0 - a
        return cls(b, a, ab, np.concatenate([[1.0], ab[:-1]]))

    def inputs(self, i) -> dict[str, Any]:
        return {"alpha_t": self.alphas[i], "beta_t": self.betas[i], "alpha_bar_t": self.alphas_cumprod[i],
                "alpha_bar_tm1": self.alphas_cumprod_prev[i]}


@dataclass
class VerifyReport:
    """The sections run (one CheckResult each), the capabilities not provided, and the target."""

    target: str
    results: list[CheckResult]
    not_provided: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    runtime_s: float = 0.0

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def alpha_spent(self) -> float:
        return math.fsum(r.alpha_spent for r in self.results)

    def to_dict(self) -> dict:
        return {"target": self.target, "passed": self.passed, "alpha_fw": stats.ALPHA_FW,
                "alpha_spent": self.alpha_spent, "not_provided": self.not_provided, "skipped": self.skipped,
                "notes": self.notes, "runtime_s": round(self.runtime_s, 3),
                "sections": [r.to_dict() for r in self.results]}


# ---- rows -----------------------------------------------------------------------------------------
def _exact(ctx: CheckContext, quantity: str, where: str, source: str, actual, expected, scale, u: float,
           budget: float, note: str = "", group: str = "", role: str = "test") -> None:
    """An exact row (``stats.exact_test``): worst |actual - expected| in units of u * scale, against ``budget``."""
    out = stats.exact_test(actual, expected, scale, budget, unit=u)
    ctx.add(quantity, where, source, out, role=role, note=note, group=group or quantity)


def _failed_call(ctx: CheckContext, quantity: str, where: str, exc: TargetError, group: str = "") -> None:
    """A row that fails because the target's method failed; its note is the target's message."""
    out = stats.TestOutcome("exact", math.inf, 0.0, None, math.inf, 0.5, 0.0, 1.0, 1)
    ctx.add(quantity, where, "target", out, note=str(exc), group=group or quantity)


def _tensor(tgt: Target, method: str, value: Any, shape: tuple[int, ...]) -> torch.Tensor:
    """A method's output as a CPU tensor of ``shape``, or TargetError naming what it returned."""
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, torch.Tensor):
        raise TargetError(f"{tgt.label}.{method} returned {type(value).__name__}, not a tensor of shape {list(shape)}")
    if tuple(value.shape) != tuple(shape):
        raise TargetError(f"{tgt.label}.{method} returned shape {list(value.shape)}, expected {list(shape)}")
    value = value.detach().to("cpu")
    if not torch.isfinite(value).all():
        bad = int((~torch.isfinite(value)).sum())
        raise TargetError(f"{tgt.label}.{method} returned {bad} non-finite values (NaN or inf)")
    return value


def _t_arg(tgt: Target, i: torch.Tensor) -> torch.Tensor:
    return i + tgt.timestep_base


def _u_of(tgt: Target) -> float:
    """The roundoff the exact rows allow for: the float32 inputs', or the target's stored arrays' if coarser."""
    return max([unit_roundoff("float32"), *(unit_roundoff(d) for d in tgt.dtypes.values())])


# ---- sections -------------------------------------------------------------------------------------
def _schedule(ctx: CheckContext, tgt: Target, ref: Reference) -> None:
    from derivations import schedule_definitions as SD

    T = ref.betas.size
    if tgt.betas is not None and tgt.alphas_cumprod is not None:
        u = max(unit_roundoff(tgt.dtypes["betas"]), unit_roundoff(tgt.dtypes["alphas_cumprod"]))
        ab = tgt.alphas_cumprod
        # a cumulative product of T factors rounds by up to ~T u relatively
        _exact(ctx, "alphas_cumprod = cumprod(1 - betas)", f"t=1..{T}", "target arrays", ab, ref.alphas_cumprod,
               np.abs(ref.alphas_cumprod) * np.arange(1, T + 1), u, BUDGET["schedule"],
               note=f"stored as {tgt.dtypes['alphas_cumprod']}", group="alphas_cumprod")
    claim = tgt.schedule_claim
    if claim is not None:
        u = unit_roundoff(tgt.dtypes.get("betas", "float64"))
        if claim["kind"] == "linear":
            want = SD.linear_betas(T, claim["beta_start"], claim["beta_end"])
            what = f"linear {claim['beta_start']:g}..{claim['beta_end']:g}"
            scale = np.maximum(np.abs(want), abs(want).max() * 1e-3)
        else:
            want = SD.cosine_betas(T, claim.get("s", 0.008))
            what = f"cosine s={claim.get('s', 0.008):g}"
            # beta_t = 1 - f(t)/f(t-1): the subtraction leaves the ratio's rounding (u times the ratio,
            # not times beta_t), and f near cos(pi/2) at the end amplifies it (the condition number)
            scale = np.maximum(np.abs(want), 1.0 - want) * SD.cosine_beta_condition(T, claim.get("s", 0.008))
        if tgt.betas is None:  # compare alpha_bar instead
            _exact(ctx, "alphas_cumprod = the claimed schedule's", f"{what}, t=1..{T}", "definition (sympy)",
                   ref.alphas_cumprod, np.cumprod(1.0 - want), np.arange(1, T + 1) * np.abs(np.cumprod(1.0 - want)),
                   u, BUDGET["schedule"], group="claimed schedule")
        else:
            rel = np.abs(ref.betas - want) / np.maximum(np.abs(want), 1e-300)
            j = int(np.argmax(rel))
            note = "" if rel[j] < 1e-6 else (f"betas differ most at t={j + 1}: {ref.betas[j]:.6g} against the "
                                              f"definition's {want[j]:.6g} ({ref.betas[j] / want[j]:.4g}x); "
                                              f"{int((rel > 1e-6).sum())} of {T} differ")
            _exact(ctx, "betas = the claimed schedule's", f"{what}, t=1..{T}", "definition (sympy)",
                   ref.betas, want, scale, u, BUDGET["schedule"], note=note, group="claimed schedule")
    # precision: the coefficients a step divides by, from the stored arrays, against float64
    stored_dtype = tgt.dtypes.get("alphas_cumprod", tgt.dtypes.get("betas", "float64"))
    if unit_roundoff(stored_dtype) > unit_roundoff("float64"):
        dt = {"float32": np.float32, "float16": np.float16}.get(stored_dtype.replace("torch.", ""), np.float32)
        ab_stored = (np.cumprod((1.0 - ref.betas.astype(dt)).astype(dt), dtype=dt).astype(np.float64)
                     if tgt.alphas_cumprod is None else tgt.alphas_cumprod)
        with np.errstate(divide="ignore", invalid="ignore"):
            got = np.sqrt(np.maximum(1.0 - ab_stored, 0.0))
            want = np.sqrt(1.0 - ref.alphas_cumprod)
            rel = np.abs(got - want) / want
        ones = np.flatnonzero(ab_stored >= 1.0)
        note = (f"stored as {stored_dtype}; worst at t={int(np.nanargmax(rel)) + 1}"
                + (f"; alpha_bar rounds to 1 at t = {', '.join(str(int(i) + 1) for i in ones[:5])}"
                   + (" ..." if ones.size > 5 else "") if ones.size else ""))
        out = stats.TestOutcome("exact", float(np.nanmax(rel)), 0.0, None, float(np.nanmax(rel)), COEF_REL_TOL, 0.0,
                                COEF_REL_TOL, int(T))
        ctx.add("sqrt(1 - alpha_bar_t) from the stored arrays, relative error", f"t=1..{T}", "float64 from own betas",
                out, note=note, group="precision")
        # beta_tilde_t from the stored arrays (the posterior variance a step computes from them)
        b_st = (tgt.betas if tgt.betas is not None else 1.0 - ab_stored / np.concatenate([[1.0], ab_stored[:-1]]))
        prev = np.concatenate([[1.0], ab_stored[:-1]])
        with np.errstate(divide="ignore", invalid="ignore"):
            bt_st = b_st * (1.0 - prev) / (1.0 - ab_stored)
            bt = ref.betas * (1.0 - ref.alphas_cumprod_prev) / (1.0 - ref.alphas_cumprod)
            relv = np.abs(bt_st[1:] - bt[1:]) / bt[1:]
        worst = float(np.nanmax(np.where(np.isfinite(relv), relv, np.inf))) if relv.size else 0.0
        out = stats.TestOutcome("exact", worst, 0.0, None, worst, COEF_REL_TOL, 0.0, COEF_REL_TOL, int(T))
        ctx.add("beta_tilde_t from the stored arrays, relative error", f"t=2..{T}", "float64 from own betas", out,
                role=ROLE_DIAGNOSTIC, note=f"stored as {stored_dtype}" + (
                    f"; worst at t={int(np.nanargmax(np.where(np.isfinite(relv), relv, np.inf))) + 2}" if relv.size else ""),
                group="precision beta_tilde")


def _forward(ctx: CheckContext, tgt: Target, ref: Reference) -> None:
    fm = ctx.formulas("marginal")
    T = ref.betas.size
    g = torch.Generator().manual_seed(ctx.seed)
    dtype = INPUT_DTYPE
    i = torch.arange(T).repeat_interleave(FORWARD_PER_T)
    n = i.numel()
    shape = (n, *STEP_SHAPE)
    x0 = torch.randn(shape, generator=g, dtype=torch.float64)
    noise = torch.randn(shape, generator=g, dtype=torch.float64)
    try:
        if tgt.q_sample_draws_noise:
            out = tgt.call("q_sample", x0.to(dtype), _t_arg(tgt, i))
            if not (isinstance(out, tuple) and len(out) == 2):
                raise TargetError(f"{tgt.label}.q_sample(x_0, t) must return (x_t, noise)")
            x_t, noise_t = out
            noise = _tensor(tgt, "q_sample", noise_t, shape).to(torch.float64)
        else:
            x_t = tgt.call("q_sample", x0.to(dtype), _t_arg(tgt, i), noise.to(dtype))
        x_t = _tensor(tgt, "q_sample", x_t, shape).to(torch.float64)
    except TargetError as exc:
        _failed_call(ctx, "q_sample(x_0, t, noise)", f"t=1..{T}", exc, group="q_sample")
        return
    x0 = x0.to(dtype).to(torch.float64)
    noise = noise.to(dtype).to(torch.float64)
    inp = ref.inputs(i.numpy())
    a = np.asarray(fm["x_t_mean_coef"](**inp)).reshape(-1, 1, 1, 1)
    b = np.sqrt(np.asarray(fm["x_t_variance"](**inp))).reshape(-1, 1, 1, 1)
    want = a * x0.numpy() + b * noise.numpy()
    ca, cb = _conditions(ref, i.numpy())
    # BUDGET units of roundoff of each term, plus 4 per unit of the coefficient's conditioning
    k = 4.0 / BUDGET["forward"]
    scale = np.abs(a * x0.numpy()) * (1 + k * (ca - 1)) + np.abs(b * noise.numpy()) * (1 + k * (cb - 1))
    u = _u_of(tgt)
    xs = x_t.numpy()
    for k in range(T):
        sl = slice(k * FORWARD_PER_T, (k + 1) * FORWARD_PER_T)
        _exact(ctx, "x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps  (eq. 4)", f"t={k + 1}",
               "derivation marginal", xs[sl], want[sl], scale[sl], u, BUDGET["forward"],
               note=_diagnose_forward(xs[sl], x0.numpy()[sl], noise.numpy()[sl], ref, k), group="q_sample")


def _conditions(ref: Reference, ii: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How many units of roundoff a target's own sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t) may be
    off when it computes them in its precision: alpha_bar_t is a product of t factors (t u
    relatively), and 1 - alpha_bar_t loses alpha_bar_t/(1 - alpha_bar_t) of that (e.g. t = 1 in
    float32 with beta_1 = 1e-4: 3e-4 relatively in its sqrt).  Shapes [N, 1, 1, 1].  The rows allow
    4 units of roundoff per unit of these, so a float32 target's tolerance at t = 1 of the source's
    schedule is about 1e-3 of the coefficient: a 1 % error is caught at every t."""
    t = (ii + 1).astype(np.float64).reshape(-1, 1, 1, 1)
    ab = ref.alphas_cumprod[ii].reshape(-1, 1, 1, 1)
    return 1.0 + t / 2.0, 1.0 + t * ab / (2.0 * np.maximum(1.0 - ab, 1e-300))


def _diagnose_forward(x_t, x0, noise, ref: Reference, k: int) -> str:
    """For a failing t: the fitted (a, b) of x_t = a x_0 + b eps, and the known mistake it matches."""
    A = np.stack([x0.reshape(-1), noise.reshape(-1)], axis=1)
    (a, b), *_ = np.linalg.lstsq(A, x_t.reshape(-1), rcond=None)
    ab = ref.alphas_cumprod
    want_a, want_b = math.sqrt(ab[k]), math.sqrt(1 - ab[k])
    if abs(a - want_a) <= 1e-4 * want_a + 1e-6 and abs(b - want_b) <= 1e-4 * want_b + 1e-6:
        return ""
    cands = {}
    for d in (-1, 1):
        if 0 <= k + d < ab.size:
            cands[f"alpha_bar read at t={k + 1 + d} (one step off)"] = (math.sqrt(ab[k + d]), math.sqrt(1 - ab[k + d]))
    cands["alpha_bar where sqrt(alpha_bar) belongs"] = (ab[k], math.sqrt(1 - ab[k]))
    cands["1 - alpha_bar (the variance) where its sqrt belongs"] = (want_a, 1 - ab[k])
    cands["alpha_t where alpha_bar_t belongs"] = (math.sqrt(ref.alphas[k]), math.sqrt(1 - ref.alphas[k]))
    best = min(cands, key=lambda c: abs(cands[c][0] - a) + abs(cands[c][1] - b))
    ca, cb = cands[best]
    fit = f"fitted x_t = {a:.6g} x_0 + {b:.6g} eps, expected {want_a:.6g} and {want_b:.6g}"
    if abs(ca - a) + abs(cb - b) <= 1e-3 * (abs(a) + abs(b)):
        return f"{fit}: matches {best}"
    return fit


def _step(ctx: CheckContext, tgt: Target, ref: Reference, samples: int) -> None:
    fm, fp = ctx.formulas("mean-eps"), ctx.formulas("posterior")
    T = ref.betas.size
    per_t = max(1, -(-samples // int(np.prod(STEP_SHAPE))))
    i = torch.arange(T).repeat_interleave(per_t)
    n = i.numel()
    shape = (n, *STEP_SHAPE)
    dtype = INPUT_DTYPE
    g = torch.Generator().manual_seed(ctx.seed)
    x_a = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    e_a = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    x_b = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    e_b = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    seed = int(torch.randint(0, 2**62, (1,), generator=g))
    var_name = "beta" if tgt.variance == "beta" else "beta_tilde"
    n_var = T - 1  # one variance row per t > 1, plus the pooled one
    alpha = ctx.set_tests(n_var + 1)
    dof_t = per_t * int(np.prod(STEP_SHAPE))
    rel = stats.variance_detectable_ratio(dof_t, alpha)
    ctx.notes.append(f"step: {dof_t} values per t; each t's variance row detects a relative error of {rel:.3g} "
                     f"(power 0.999 at alpha {alpha:.2g}); the mean's coefficients are exact rows (two calls with "
                     f"the same generator state differ by the mean alone)")

    def run(x, e, mode: str):
        """mode "mixed": one batch of every t; "per t": a batch per t (t of shape [N]); "scalar t":
        a batch per t with t of shape [1] (the source's sample_timestep takes no more)."""
        torch.manual_seed(seed)  # a target that draws from torch's global generator is reproducible too
        gen = torch.Generator().manual_seed(seed)
        if mode == "mixed":
            return _tensor(tgt, "step", tgt.call("step", e, _t_arg(tgt, i), x, gen), shape).to(torch.float64)
        outs = []
        for k in range(T):
            sl = slice(k * per_t, (k + 1) * per_t)
            tk = _t_arg(tgt, i[sl] if mode == "per t" else i[k * per_t: k * per_t + 1])
            outs.append(_tensor(tgt, "step", tgt.call("step", e[sl], tk, x[sl], gen), (per_t, *STEP_SHAPE)))
        return torch.cat(outs).to(torch.float64)

    mode = "mixed"
    try:
        out_a = run(x_a, e_a, mode)
        ok = stats.TestOutcome("exact", 0.0, 0.0, None, 0.0, 0.5, 0.0, 1.0, n)  # failed calls: 0 (any one fails)
        ctx.add("one step on a batch mixing every t", f"t=1..{T}", "target", ok, group="mixed t")
    except TargetError as exc:
        _failed_call(ctx, "one step on a batch mixing every t (per element)", f"t=1..{T}", exc, group="mixed t")
        for mode in ("per t", "scalar t"):
            try:
                out_a = run(x_a, e_a, mode)
                break
            except TargetError as exc2:
                last = exc2
        else:
            _failed_call(ctx, "one step, one t per batch", f"t=1..{T}", last, group="step")
            return
        ctx.notes.append(f"step: the rows below ran one t per call ({mode})")
    try:
        out_b = run(x_b, e_b, mode)
        out_a2 = run(x_a, e_a, mode)
    except TargetError as exc:
        _failed_call(ctx, "one step", f"t=1..{T}", exc, group="step")
        return
    u = _u_of(tgt)
    if not torch.equal(out_a, out_a2):
        out = stats.TestOutcome("exact", float((out_a - out_a2).abs().max()), 0.0, None, math.inf, 0.5, 0.0, 0.0, n)
        ctx.add("the step's noise comes from the given generator", f"t=1..{T}", "target", out,
                note="two calls with the same generator state and inputs differ: the noise is drawn elsewhere "
                     "(the protocol's step draws from its generator argument), so the mean cannot be isolated",
                group="reproducible")
        return
    ii = i.numpy()
    inp = ref.inputs(ii)
    view = (-1, 1, 1, 1)
    xa, ea, xb, eb = (v.to(torch.float64).numpy() for v in (x_a, e_a, x_b, e_b))
    inp4 = {k: np.asarray(v).reshape(view) for k, v in inp.items()}
    _, cond = _conditions(ref, ii)
    if tgt.prediction == "eps":
        mu_a = np.asarray(fm["mu_tilde_t_eps"](x_t=xa, eps=ea, **inp4))
        mu_b = np.asarray(fm["mu_tilde_t_eps"](x_t=xb, eps=eb, **inp4))
        c_eps = (ref.betas / np.sqrt(1.0 - ref.alphas_cumprod) / np.sqrt(ref.alphas))[ii].reshape(view)
        r_sqrt = (1.0 / np.sqrt(ref.alphas))[ii].reshape(view)
        terms = r_sqrt * (np.abs(xa) + np.abs(xb)) + c_eps * (np.abs(ea) + np.abs(eb))
    else:  # the output read as x_0 or v (derivation parametrizations), the mean as eq. 7 at x0_hat
        fz = ctx.formulas("parametrizations")
        x0a, x0b = (np.asarray(fz["x_0_from_v"](x_t=x, v=e, alpha_bar_t=inp4["alpha_bar_t"]))
                    if tgt.prediction == "v" else e for x, e in ((xa, ea), (xb, eb)))
        mu_a = np.asarray(fp["mu_tilde_t"](x_0=x0a, x_t=xa, **inp4))
        mu_b = np.asarray(fp["mu_tilde_t"](x_0=x0b, x_t=xb, **inp4))
        c1 = np.asarray(fp["posterior_mean_coef1"](**inp4))
        c2 = np.asarray(fp["posterior_mean_coef2"](**inp4))
        sab = np.sqrt(inp4["alpha_bar_t"])
        x0_terms = (np.abs(x0a) + np.abs(x0b)) if tgt.prediction == "x0" else (
            sab * (np.abs(xa) + np.abs(xb)) + np.sqrt(1 - inp4["alpha_bar_t"]) * (np.abs(ea) + np.abs(eb)))
        terms = c1 * x0_terms + c2 * (np.abs(xa) + np.abs(xb))
    # any route to the mean (eq. 11, or eq. 7 at x0_hat as diffusers takes) rounds 1 - alpha_bar_t
    # and 1 - alpha_bar_{t-1} in the target's precision: 4 units of roundoff per unit of conditioning
    # the outputs round with their noise term too (sigma z, as large as the mean at a zero-SNR t = T)
    scale = (terms * (1 + 4.0 / BUDGET["step"] * (cond - 1)) + np.abs(mu_a) + np.abs(mu_b)
             + np.abs(out_a.numpy() - mu_a) + np.abs(out_b.numpy() - mu_b))
    diff = (out_a - out_b).numpy()
    want = mu_a - mu_b
    res = out_a.numpy() - mu_a
    var_t = (ref.betas if var_name == "beta" else np.asarray(fp["posterior_variance"](**ref.inputs(np.arange(T)))))
    for k in range(T):
        sl = slice(k * per_t, (k + 1) * per_t)
        if tgt.prediction == "eps":
            _exact(ctx, "mean: (x_t - beta_t/sqrt(1 - alpha_bar_t) eps)/sqrt(alpha_t)  (eq. 11)", f"t={k + 1}",
                   "derivation mean-eps", diff[sl], want[sl], scale[sl], u, BUDGET["step"],
                   note=_diagnose_mean(diff[sl], xa[sl] - xb[sl], ea[sl] - eb[sl], ref, k), group="mean")
        else:
            _exact(ctx, f"mean: mu_tilde_t(x_t, x0_hat) with x0_hat from the {tgt.prediction} output  (eq. 7)",
                   f"t={k + 1}", "derivations posterior, parametrizations", diff[sl], want[sl], scale[sl], u,
                   BUDGET["step"], group="mean")
    # index 0 (paper t = 1): no noise, exactly
    sl0 = slice(0, per_t)
    r0 = res[sl0].reshape(-1)
    sd0 = float(np.sqrt(r0 @ r0 / r0.size))
    note0 = "" if sd0 <= 1e-3 * math.sqrt(ref.betas[0]) else (
        f"the output's noise at t = 1 has sd {sd0:.4g}" + (
            f": matches noise of variance beta_1 = {ref.betas[0]:.4g} (sd {math.sqrt(ref.betas[0]):.4g}) added at t = 1"
            if abs(sd0 / math.sqrt(ref.betas[0]) - 1) < 0.05 else ""))
    _exact(ctx, "no noise at t = 1: x_0 = the mean", "t=1", "Ho et al. Alg. 2", out_a.numpy()[sl0], mu_a[sl0],
           scale[sl0], u, BUDGET["step"], note=note0, group="last step")
    # variance: residual = sigma_t z with z ~ N(0, I), per t and pooled
    pooled_ss, pooled_dof = 0.0, 0
    est = np.full(T, np.nan)
    for k in range(1, T):
        sl = slice(k * per_t, (k + 1) * per_t)
        r = res[sl].reshape(-1)
        ss = float(r @ r)
        o = stats.chi2_variance_test(ss, r.size, float(var_t[k]), alpha)
        o = stats.TestOutcome(o.kind, o.estimate, o.expected, o.se, o.statistic, o.threshold, o.alpha, o.delta, r.size)
        ctx.add(f"variance of the step's noise = {'beta_t' if var_name == 'beta' else 'beta_tilde_t (eq. 7)'}",
                f"t={k + 1}", "derivation posterior" if var_name == "beta_tilde" else "schedule", o,
                note=_diagnose_variance(ss / r.size, ref, k, var_name), group="variance")
        pooled_ss += ss / float(var_t[k])
        pooled_dof += r.size
        est[k] = ss / r.size
    if T > 1:
        o = stats.chi2_variance_test(pooled_ss, pooled_dof, 1.0, alpha)
        o = stats.TestOutcome(o.kind, o.estimate, o.expected, o.se, o.statistic, o.threshold, o.alpha, o.delta,
                              pooled_dof)
        ctx.add("noise / its sd, pooled over t = 2..T: variance 1", f"t=2..{T}", "derivation posterior", o,
                note=_diagnose_variances(est, ref, var_t, failed=not o.passed or any(
                    not r.passed for r in ctx.rows if r.group == "variance")), group="variance pooled")


def _diagnose_mean(diff, dx, de, ref: Reference, k: int) -> str:
    """For a failing t: the fitted coefficients of x_t and eps in the mean, and a known mistake they match."""
    A = np.stack([dx.reshape(-1), de.reshape(-1)], axis=1)
    (cx, ce), *_ = np.linalg.lstsq(A, diff.reshape(-1), rcond=None)
    b, a, ab = ref.betas, ref.alphas, ref.alphas_cumprod
    want_x, want_e = 1 / math.sqrt(a[k]), -b[k] / math.sqrt(1 - ab[k]) / math.sqrt(a[k])
    if abs(cx - want_x) <= 1e-5 * abs(want_x) and abs(ce - want_e) <= 1e-5 * abs(want_e):
        return ""
    fit = f"fitted mean = {cx:.6g} x_t + {ce:.6g} eps, expected {want_x:.6g} x_t + {want_e:.6g} eps"
    cands = {}
    for d in (-1, 1):
        j = k + d
        if 0 <= j < b.size:
            cands[f"alpha_bar read at t={j + 1} (one step off) in eps's coefficient"] = (
                want_x, -b[k] / math.sqrt(1 - ab[j]) / math.sqrt(a[k]))
            cands[f"every coefficient read at t={j + 1} (one step off)"] = (
                1 / math.sqrt(a[j]), -b[j] / math.sqrt(1 - ab[j]) / math.sqrt(a[j]))
    cands["sqrt(alpha_bar_t) where sqrt(1 - alpha_bar_t) belongs"] = (want_x, -b[k] / math.sqrt(ab[k]) / math.sqrt(a[k]))
    cands["1 - alpha_bar_t where its sqrt belongs"] = (want_x, -b[k] / (1 - ab[k]) / math.sqrt(a[k]))
    best = min(cands, key=lambda c: abs(cands[c][0] - cx) + abs(cands[c][1] - ce))
    if abs(cands[best][0] - cx) + abs(cands[best][1] - ce) <= 1e-4 * (abs(cx) + abs(ce)):
        return f"{fit}: matches {best}"
    return fit


def _variance_laws(ref: Reference, k: np.ndarray) -> dict[str, np.ndarray]:
    """The variance of a step's noise at 0-based indices ``k`` under each known law, right or wrong
    (the names say which mistake gives it)."""
    b, ab, abp = ref.betas[k], ref.alphas_cumprod[k], ref.alphas_cumprod_prev[k]
    abn = np.concatenate([ref.alphas_cumprod[1:], [1.0]])[k]  # alpha_bar_{t+1}, 1 past the end
    bt = b * (1 - abp) / (1 - ab)
    return {
        "beta_tilde_t (Ho et al.)": bt,
        "beta_t (Ho et al.'s other choice; declare variance = 'beta')": b,
        "beta_tilde_t^2: the variance multiplies z where its sqrt belongs": bt**2,
        "sqrt(beta_tilde_t): the sd's sqrt multiplies z": np.sqrt(bt),
        "beta_tilde_t without the division by 1 - alpha_bar_t": b * (1 - abp),
        "alphas_cumprod_prev padded on the wrong side (alpha_bar_{t+1} where alpha_bar_{t-1} belongs)":
            b * (1 - abn) / (1 - ab),
    }


def _diagnose_variances(est: np.ndarray, ref: Reference, want: np.ndarray, failed: bool) -> str:
    """For the step's noise over t = 2..T, when a variance row failed: the known law the per-t
    estimates follow (mean |log ratio| over t under 0.1 and under half the expected law's)."""
    if not failed:
        return ""
    k = np.arange(1, est.size)
    e, b = est[k], ref.betas[k]

    def dev(law):
        """mean over t of |log(estimate / law)|, each capped at 5 (a zero on either side)"""
        tiny = 1e-10 * b  # both (rounding) zero: a match
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.abs(np.log(np.maximum(e, 1e-300) / np.maximum(law, 1e-300)))
        d = np.where((e <= tiny) & (law <= tiny), 0.0, d)
        return float(np.mean(np.minimum(d, 5.0)))

    laws = _variance_laws(ref, k)
    d_exp = dev(want[k])
    best = min(laws, key=lambda c: dev(laws[c]))
    return (f"the noise variance follows {best} (mean |log ratio| {dev(laws[best]):.3f} over t, against "
            f"{d_exp:.3f} for the expected)" if dev(laws[best]) < min(0.1, d_exp / 2) else
            f"the noise variance follows no known law (mean |log ratio| to the expected {d_exp:.3f} over t)")


def _diagnose_variance(est: float, ref: Reference, k: int, var_name: str) -> str:
    """For one t: the estimated variance against the expected one, and the known law it matches (within 5 %)."""
    laws = {c: float(v[0]) for c, v in _variance_laws(ref, np.array([k])).items()}
    want = laws["beta_t (Ho et al.'s other choice; declare variance = 'beta')"] if var_name == "beta" \
        else laws["beta_tilde_t (Ho et al.)"]
    if abs(est - want) <= 0.05 * want:
        return ""
    best = min(laws, key=lambda c: abs(math.log(max(est, 1e-300) / max(laws[c], 1e-300))))
    close = abs(math.log(max(est, 1e-300) / max(laws[best], 1e-300))) < 0.05
    return f"estimated variance {est:.4g} = {est / want:.3g} x the expected {want:.4g}" + (
        f": matches {best}" if close else "")


def loop_model(T: int, timestep_base: int = 0) -> Callable:
    """The sampler rows' model: deterministic and t-dependent (a skipped or shifted step changes the
    result), computed in float64 and returned in the input's dtype."""

    def model(x, t):
        tt = (t.to(torch.float64) - timestep_base).reshape(-1, *([1] * (x.dim() - 1))) / max(T, 1)
        return (0.5 * torch.tanh(x.to(torch.float64)) + 0.1 * tt).to(x.dtype)

    return model


def replay_steps(tgt: Target, model: Callable, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """x_0 from the target's ``step`` called T times in a row, x_T and then each step's noise drawn
    from one generator seeded ``seed``: what a whole loop with that generator must return."""
    T = tgt.T
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    for k in reversed(range(T)):
        t = torch.full((shape[0],), k, dtype=torch.long) + tgt.timestep_base
        x = _tensor(tgt, "step", tgt.call("step", model(x, t), t, x, g), shape)
    return x


def loop_equals_steps(ctx: CheckContext, quantity: str, tgt: Target, x_loop: torch.Tensor, x_steps: torch.Tensor,
                      note: str = "", group: str = "sample") -> None:
    """The exact row "this loop = the target's steps replayed with the same noise stream" (the
    target's unit roundoff, 4 T units of budget)."""
    T = tgt.T
    a, b = x_loop.to(torch.float64).numpy(), x_steps.to(torch.float64).numpy()
    _exact(ctx, quantity, f"T={T}, {a.shape[0]} images", "target step", a, b, np.abs(a) + np.abs(b) + 1.0,
           _u_of(tgt), 4.0 * T, note=note, group=group)


def _sampler(ctx: CheckContext, tgt: Target, ref: Reference) -> None:
    T = ref.betas.size
    shape = SAMPLER_SHAPE
    seed = ctx.seed
    model = loop_model(T, tgt.timestep_base)
    try:
        torch.manual_seed(seed)
        x_s = tgt.call("sample", model, shape, torch.Generator().manual_seed(seed))
        x_s = _tensor(tgt, "sample", x_s, shape)
    except TargetError as exc:
        _failed_call(ctx, "sample(model, shape, generator)", f"T={T}", exc, group="sample")
        return
    try:
        x = replay_steps(tgt, model, shape, seed)
    except TargetError as exc:
        _failed_call(ctx, "the same T steps one by one", f"T={T}", exc, group="sample")
        return
    loop_equals_steps(ctx, "sample = its steps replayed with the same noise stream", tgt, x_s, x,
                      note="x_T drawn first from the generator, then each step's noise; a skipped or repeated step, "
                           "an index slip or a missing noise term of any size shows here")


#: samples drawn by the target's sampler for the whole-distribution row
LAW_SAMPLES = 4_000


def _sampler_law(ctx: CheckContext, tgt: Target, ref: Reference) -> None:
    """The target's ``sample`` with the exact denoiser of check sampler's 2-D mixture (its data law
    known in closed form): KS of 4 projections of its output against that law (DKWM threshold,
    plus the start mismatch TV(q(x_T), N(0, I)) of the target's schedule, a data-processing bound).
    A test when that mismatch is at most half the threshold and the steps are fine (as check
    sampler decides); a diagnostic otherwise (the source's T = 300: sqrt(abar_T) = 0.22 left)."""
    from ddpm_check.montecarlo import sampler as SM
    from ddpm_check.montecarlo.results import ROLE_TEST

    mix = SM.sampler_mixture()
    ab_T = float(ref.alphas_cumprod[-1])
    tv = 0.0 if ab_T == 0.0 else SM.start_mismatch_tv(mix, ab_T)
    fine = bool(np.all(ref.betas[ref.alphas_cumprod >= SM.FINE_ALPHA_BAR] <= SM.FINE_BETA))
    n, dirs = LAW_SAMPLES, SM.SAMPLER_DIRECTIONS
    alpha = ctx.set_tests(len(dirs))
    eps = stats.dkwm_epsilon(n, alpha)
    role = ROLE_TEST if (tv <= 0.5 * eps and fine) else ROLE_DIAGNOSTIC
    exact = mix.predictor(ref.alphas_cumprod, tgt.prediction)

    def model(x, t):
        return exact(x, t.to(torch.long) - tgt.timestep_base).to(x.dtype)

    shape = (n, 1, 1, mix.dim)
    try:
        torch.manual_seed(ctx.seed)
        x = tgt.call("sample", model, shape, torch.Generator().manual_seed(ctx.seed))
        x = _tensor(tgt, "sample", x, shape).to(torch.float64).reshape(n, mix.dim).numpy()
    except TargetError as exc:
        _failed_call(ctx, "sample with the exact denoiser", f"n={n}", exc, group="sample law")
        return
    note = (f"start N(0,I) vs q(x_T): TV {tv:.4f}" + ("" if fine else "; coarse steps")
            + ("" if role == ROLE_TEST else ": a diagnostic, 'finding' = the output differs from the data law"))
    for u, name in zip(dirs, ("e1", "e2", "(e1+e2)/sqrt2", "(e1-e2)/sqrt2")):
        out = stats.ks_test(x @ u, lambda v, u=u: mix.projection_cdf(u, v), alpha)
        ctx.add("law of u.x_0 (KS) with the exact denoiser", f"u={name}", "check sampler's mixture", out,
                role=role, note=note, threshold=eps + tv if role == ROLE_TEST else eps, group="sample law")


def _loss(ctx: CheckContext, tgt: Target, ref: Reference) -> None:
    fm = ctx.formulas("marginal")
    T = ref.betas.size
    g = torch.Generator().manual_seed(ctx.seed)
    i = torch.arange(T)
    shape = (T, *STEP_SHAPE)
    dtype = INPUT_DTYPE
    x0 = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    noise = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    seen: dict[str, torch.Tensor] = {}

    def model(x, t):
        seen["x_t"], seen["t"] = x.detach().clone(), t.detach().clone()
        return torch.zeros_like(x)

    try:
        value = tgt.call("loss", model, x0, _t_arg(tgt, i), noise)
    except TargetError as exc:
        _failed_call(ctx, "loss(model, x_0, t, noise)", f"t=1..{T}", exc, group="loss")
        return
    if "t" not in seen or tuple(seen["x_t"].shape) != shape or seen["t"].shape != (T,):
        out = stats.TestOutcome("exact", math.inf, 0.0, None, math.inf, 0.5, 0.0, 0.0, T)
        ctx.add("the loss calls the model once on the batch", f"t=1..{T}", "target", out, group="loss")
        return
    t_seen = seen["t"].to(torch.long) - tgt.timestep_base
    wrong = int((t_seen != i).sum())
    out = stats.TestOutcome("exact", float(wrong), 0.0, None, float(wrong), 0.5, 0.0, 1.0, T)  # any mismatch fails
    k = int(torch.nonzero(t_seen != i)[0]) if wrong else None
    ctx.add("the model is given the t that x_t was noised at", f"t=1..{T}", "target", out, group="loss t",
            note="" if not wrong else f"{wrong} of {T} differ, e.g. noised at t={k + 1}, model told t={int(t_seen[k]) + 1}")
    inp = ref.inputs(i.numpy())
    a = np.asarray(fm["x_t_mean_coef"](**inp)).reshape(-1, 1, 1, 1)
    b = np.sqrt(np.asarray(fm["x_t_variance"](**inp))).reshape(-1, 1, 1, 1)
    x0n, nn = x0.to(torch.float64).numpy(), noise.to(torch.float64).numpy()
    ca, cb = _conditions(ref, i.numpy())
    k = 4.0 / BUDGET["forward"]  # as the q_sample rows: the target's own rounding of its coefficients
    _exact(ctx, "the model's x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps", f"t=1..{T}",
           "derivation marginal", seen["x_t"].to(torch.float64).numpy(), a * x0n + b * nn,
           np.abs(a * x0n) * (1 + k * (ca - 1)) + np.abs(b * nn) * (1 + k * (cb - 1)), _u_of(tgt),
           BUDGET["forward"], group="loss x_t")
    try:
        v = float(value)
    except (TypeError, ValueError):
        return
    if tgt.prediction == "eps":
        target = nn
    elif tgt.prediction == "x0":
        target = x0n
    else:
        target = np.asarray(ctx.formulas("parametrizations")["v_from_eps_x_0"](
            eps=nn, x_0=x0n, alpha_bar_t=ref.alphas_cumprod[i.numpy()].reshape(-1, 1, 1, 1)))
    l2, l1 = float(np.mean(target**2)), float(np.mean(np.abs(target)))
    kind = "L2 (Ho et al. eq. 14)" if abs(v - l2) <= 1e-4 * l2 else ("L1 (not eq. 14)" if abs(v - l1) <= 1e-4 * l1 else "neither")
    out = stats.TestOutcome("exact", v, l2, None, abs(v - l2) / (1e-4 * l2), 1.0, 0.0, 1e-4 * l2, T)
    ctx.add(f"loss of a zero prediction = mean({tgt.prediction} target^2)", f"t=1..{T}", "Ho et al. eq. 14", out,
            role=ROLE_DIAGNOSTIC, note=f"the loss is {kind}", group="loss kind")


#: DDIM rows: S visits of T with the "leading" spacing (diffusers' default), stride T // S
DDIM_STEPS = 50
DDIM_ETAS = (0.0, 1.0)


def _ddim_visits(T: int) -> tuple[np.ndarray, np.ndarray]:
    """(t, t_prev) of every visit of a leading-spacing DDIM run (t_prev = t - stride, < 0 after the last)."""
    S = min(DDIM_STEPS, T)
    k = T // S
    ts = (np.arange(S) * k)[::-1]
    return ts, ts - k


def _ddim(ctx: CheckContext, tgt: Target, ref: Reference, samples: int) -> None:
    fd = ctx.formulas("ddim")
    T = ref.betas.size
    ts, tps = _ddim_visits(T)
    S = ts.size
    per_t = max(1, -(-samples // int(np.prod(STEP_SHAPE))))
    i = torch.as_tensor(np.repeat(ts, per_t))
    ip = torch.as_tensor(np.repeat(tps, per_t))
    n = i.numel()
    shape = (n, *STEP_SHAPE)
    dtype = INPUT_DTYPE
    g = torch.Generator().manual_seed(ctx.seed)
    x_a, e_a, x_b, e_b = (torch.randn(shape, generator=g, dtype=torch.float64).to(dtype) for _ in range(4))
    seed = int(torch.randint(0, 2**62, (1,), generator=g))
    n_noisy = sum(1 for eta in DDIM_ETAS if eta > 0) * (S - 1)
    alpha = ctx.set_tests(max(1, n_noisy + (sum(1 for eta in DDIM_ETAS if eta > 0) if S > 1 else 0)))
    dof_t = per_t * int(np.prod(STEP_SHAPE))
    ctx.notes.append(f"ddim: {S} visits of T = {T} (leading spacing, stride {T // S}), eta in {list(DDIM_ETAS)}; "
                     f"{dof_t} values per visit; each variance row detects a relative error of "
                     f"{stats.variance_detectable_ratio(dof_t, alpha):.3g}; the mean is exact (same generator state)")
    ab = ref.alphas_cumprod
    ab_t = ab[i.numpy()]
    ab_p = np.where(ip.numpy() < 0, 1.0, ab[np.clip(ip.numpy(), 0, None)])
    view = (-1, 1, 1, 1)
    u = _u_of(tgt)
    _, cond = _conditions(ref, i.numpy())
    for eta in DDIM_ETAS:
        sig = np.asarray(fd["sigma_eta"](eta=eta, alpha_bar_t=ab_t, alpha_bar_tm1=ab_p), dtype=np.float64)

        def run(x, e):
            torch.manual_seed(seed)
            gen = torch.Generator().manual_seed(seed)
            return _tensor(tgt, "ddim_step", tgt.call("ddim_step", e, _t_arg(tgt, i), _t_arg(tgt, ip), x, eta, gen),
                           shape).to(torch.float64)

        try:
            out_a, out_b, out_a2 = run(x_a, e_a), run(x_b, e_b), run(x_a, e_a)
        except TargetError as exc:
            _failed_call(ctx, f"ddim_step, eta={eta:g}", f"{S} visits", exc, group=f"ddim eta={eta:g}")
            continue
        if not torch.equal(out_a, out_a2):
            out = stats.TestOutcome("exact", float((out_a - out_a2).abs().max()), 0.0, None, math.inf, 0.5, 0.0, 0.0, n)
            ctx.add("the DDIM step's noise comes from the given generator", f"eta={eta:g}", "target", out,
                    group="ddim reproducible")
            continue
        kw = dict(alpha_bar_t=ab_t.reshape(view), alpha_bar_tm1=ab_p.reshape(view), sigma_t=sig.reshape(view))
        xa, ea, xb, eb = (v.to(torch.float64).numpy() for v in (x_a, e_a, x_b, e_b))
        if tgt.prediction == "eps":
            mu_a = np.asarray(fd["ddim_mean_eps"](x_t=xa, eps=ea, **kw))
            mu_b = np.asarray(fd["ddim_mean_eps"](x_t=xb, eps=eb, **kw))
        else:  # x0_hat from the output (derivation parametrizations), then the x_0 form of the step
            fz = ctx.formulas("parametrizations")
            x0a, x0b = (np.asarray(fz["x_0_from_v"](x_t=x, v=e, alpha_bar_t=kw["alpha_bar_t"]))
                        if tgt.prediction == "v" else e for x, e in ((xa, ea), (xb, eb)))
            mu_a = np.asarray(fd["ddim_mean"](x_t=xa, x_0=x0a, **kw))
            mu_b = np.asarray(fd["ddim_mean"](x_t=xb, x_0=x0b, **kw))
        # x0_hat divides by sqrt(abar_t): its terms, and the conditioning of 1 - abar, set the scale
        r = np.sqrt(ab_p / ab_t).reshape(view)
        terms = r * (np.abs(xa) + np.abs(xb)) + (r * np.sqrt(1 - ab_t).reshape(view) + 1.0) * (np.abs(ea) + np.abs(eb))
        scale = (terms * (1 + 4.0 / BUDGET["step"] * (cond - 1)) + np.abs(mu_a) + np.abs(mu_b)
                 + np.abs(out_a.numpy() - mu_a) + np.abs(out_b.numpy() - mu_b))  # sigma z rounds too
        diff, want, res = (out_a - out_b).numpy(), mu_a - mu_b, out_a.numpy() - mu_a
        for k in range(S):
            sl = slice(k * per_t, (k + 1) * per_t)
            where = f"eta={eta:g} t={int(ts[k]) + 1}->{int(tps[k]) + 1 if tps[k] >= 0 else 0}"
            _exact(ctx, "DDIM mean: sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps  (Song eq. 12)", where,
                   "derivation ddim", diff[sl], want[sl], scale[sl], u, BUDGET["step"], group=f"ddim mean eta={eta:g}")
        # the last visit lands on abar_prev = 1: sigma = 0 and x_0 = x0_hat, exactly
        sl = slice((S - 1) * per_t, S * per_t)
        _exact(ctx, "DDIM's last step: no noise, x_0 = x0_hat", f"eta={eta:g} t={int(ts[-1]) + 1}->0",
               "derivation ddim", out_a.numpy()[sl], mu_a[sl], scale[sl], u, BUDGET["step"], group="ddim last step")
        if eta == 0:
            _exact(ctx, "eta = 0 is deterministic: x_prev = the mean", f"{S} visits", "derivation ddim",
                   out_a.numpy(), mu_a, scale, u, BUDGET["step"], group="ddim eta=0")
            continue
        pooled, dof = 0.0, 0
        for k in range(S - 1):
            sl = slice(k * per_t, (k + 1) * per_t)
            rr = res[sl].reshape(-1)
            ss = float(rr @ rr)
            s2 = float(sig[k * per_t]) ** 2
            o = stats.chi2_variance_test(ss, rr.size, s2, alpha)
            o = stats.TestOutcome(o.kind, o.estimate, o.expected, o.se, o.statistic, o.threshold, o.alpha, o.delta, rr.size)
            ctx.add("DDIM noise variance = sigma_t(eta)^2  (Song eq. 16)", f"eta={eta:g} t={int(ts[k]) + 1}",
                    "derivation ddim", o, group=f"ddim variance eta={eta:g}")
            pooled += ss / s2
            dof += rr.size
        if dof == 0:  # one visit (T = 1): it lands on abar_prev = 1, no noise to test
            continue
        o = stats.chi2_variance_test(pooled, dof, 1.0, alpha)
        o = stats.TestOutcome(o.kind, o.estimate, o.expected, o.se, o.statistic, o.threshold, o.alpha, o.delta, dof)
        ctx.add("DDIM noise / sigma_t, pooled: variance 1", f"eta={eta:g}", "derivation ddim", o,
                group=f"ddim variance pooled eta={eta:g}")
    if tgt.provides("ddim_sample"):
        _ddim_sampler(ctx, tgt, ref)


def _ddim_sampler(ctx: CheckContext, tgt: Target, ref: Reference) -> None:
    T = ref.betas.size
    ts, tps = _ddim_visits(T)
    shape = SAMPLER_SHAPE

    def model(x, t):
        tt = (t.to(torch.float64) - tgt.timestep_base).reshape(-1, *([1] * (x.dim() - 1))) / max(T, 1)
        return (0.5 * torch.tanh(x.to(torch.float64)) + 0.1 * tt).to(x.dtype)

    for eta in DDIM_ETAS:
        try:
            torch.manual_seed(ctx.seed)
            got = tgt.call("ddim_sample", model, shape, int(ts.size), eta, torch.Generator().manual_seed(ctx.seed))
            got = _tensor(tgt, "ddim_sample", got, shape).to(torch.float64)
            torch.manual_seed(ctx.seed)
            g = torch.Generator().manual_seed(ctx.seed)
            x = torch.randn(shape, generator=g)
            for t, tp in zip(ts.tolist(), tps.tolist()):
                tt = torch.full((shape[0],), t, dtype=torch.long) + tgt.timestep_base
                tq = torch.full((shape[0],), tp, dtype=torch.long) + tgt.timestep_base
                x = _tensor(tgt, "ddim_step", tgt.call("ddim_step", model(x, tt), tt, tq, x, eta, g), shape)
        except TargetError as exc:
            _failed_call(ctx, f"ddim_sample, eta={eta:g}", f"S={ts.size}", exc, group="ddim sample")
            continue
        scale = got.abs().numpy() + x.to(torch.float64).abs().numpy() + 1.0
        _exact(ctx, "DDIM sample = its steps replayed with the same noise stream", f"eta={eta:g} S={ts.size}",
               "target ddim_step", got.numpy(), x.to(torch.float64).numpy(), scale, _u_of(tgt), 4.0 * ts.size,
               group="ddim sample")


SECTIONS: dict[str, tuple[str, Callable]] = {
    "schedule": ("the arrays and the schedule they claim", _schedule),
    "q_sample": ("q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, 1 - alpha_bar_t)  (eq. 4)", _forward),
    "step": ("one reverse step: mean (eq. 11) exact, variance beta_tilde_t, no noise at t = 1  (Alg. 2)", _step),
    "sample": ("the whole sampler equals its steps  (Alg. 2)", _sampler),
    "loss": ("the loss noises x_0 at the t it gives the model  (eq. 14)", _loss),
    "ddim_step": ("a DDIM step: mean (Song eq. 12) exact, variance sigma(eta)^2 (eq. 16), x0_hat at the end", _ddim),
}
#: sections of their own that verify runs for a capability after its main one (check paths leaves
#: them to the checks that already hold our loop's law: sampler)
EXTRA_SECTIONS: dict[str, tuple[str, str, Callable]] = {
    "sample law": ("sample", "the sampler with the exact denoiser samples the data law  (Alg. 2)", _sampler_law),
}
#: the sections with statistical rows (they share the false-failure level)
STATISTICAL = ("step", "ddim_step", "sample law")
#: the derivations whose results the rows read
NEEDS = ("marginal", "mean-eps", "posterior", "ddim", "parametrizations")


def run_sections(ctx: CheckContext, tgt: Target, samples: int) -> list[str]:
    """Every section ``tgt`` provides, into one context (a registered check's: its rows, its share
    of the budget); returns the capabilities not provided."""
    ref = Reference.of(tgt)
    missing = []
    for cap in CAPABILITIES:
        if not tgt.provides(cap) or (cap == "sample" and not tgt.provides("step")):
            missing.append(cap)
            continue
        fn = SECTIONS[cap][1]
        ctx.say(f"{cap} ...")
        fn(ctx, tgt, ref, samples) if cap in ("step", "ddim_step") else fn(ctx, tgt, ref)
    return missing


def verify(tgt: Target, samples: int = DEFAULT_SAMPLES, seed: int = stats.DEFAULT_ROOT_SEED,
           progress: Callable[[str], Any] | None = None) -> VerifyReport:
    """Run every section the target provides; missing capabilities are listed, never passed."""
    t0 = time.perf_counter()
    samples = stats.check_samples(samples, minimum=64, name="samples")
    report = VerifyReport(tgt.label, [], [], notes=list(tgt.notes))
    need_schedule = not tgt.provides("schedule")
    ref = None if need_schedule else Reference.of(tgt)
    run = []
    for cap in CAPABILITIES:
        if not tgt.provides(cap):
            report.not_provided.append(cap)
            continue
        if cap == "sample" and not tgt.provides("step"):
            report.skipped[cap] = ("its comparison with the target's own steps needs step (its law with the exact "
                                   "denoiser is checked)")
            continue
        if ref is None:
            report.skipped[cap] = "needs betas or alphas_cumprod (the reference coefficients come from them)"
            continue
        run.append(cap)
    sections = [(cap, *SECTIONS[cap]) for cap in run]
    sections += [(name, title, fn) for name, (cap, title, fn) in EXTRA_SECTIONS.items()
                 if tgt.provides(cap) and ref is not None]
    n_stat = max(1, sum(name in STATISTICAL for name, _, _ in sections))
    with torch.no_grad():
        for cap, title, fn in sections:
            ctx = CheckContext(cap, title, samples, seed, None, None, n_checks=n_stat, needs=NEEDS)
            if progress is not None:
                progress(f"verify {tgt.label}: {cap} ...")
            t1 = time.perf_counter()
            if cap in ("step", "ddim_step"):
                fn(ctx, tgt, ref, samples)
            else:
                fn(ctx, tgt, ref)
            ctx.verify_budget()
            report.results.append(CheckResult(cap, title, ctx.seed, seed, None, {"T": tgt.T}, samples, ctx.rows,
                                              time.perf_counter() - t1, ctx.notes, alpha_check=ctx.share))
    report.runtime_s = time.perf_counter() - t0
    return report
