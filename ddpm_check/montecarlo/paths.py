"""Check ``paths``: the engine of ``ddpm-check verify`` run on ddpm_check's own paths, so that the
code ``train`` and ``sample`` actually run is held to the derivations, not only the reference step.

The target is ``GaussianDiffusion`` in float32 (as training and sampling run it) on the check's
schedule: its arrays and claimed schedule, ``q_sample`` at every t, ``p_sample`` (mean exact at
every t, no noise at t = 1 per element, the noise's variance per t and pooled), ``p_sample_loop``
(the fast in-place loop) against ``p_sample`` replayed with the same noise stream, and ``loss``
(the t the model is given); and the public helpers outside that path, ``predict_x0_from_eps``
and ``p_mean_variance(clip_denoised=True)``, exactly.  ``p_sample_loop``'s other two paths are held
to ``p_sample`` the same way: the CUDA-graph loop's step (static buffers, a device-side index;
replayed eagerly on the CPU, and captured as a graph where CUDA is present) and the loop driving a
model compiled as ``sample --compile`` compiles it (where torch.compile works; a note otherwise).
See :mod:`ddpm_check.verify.engine`.
"""

from __future__ import annotations

from ddpm_check.montecarlo.context import CheckContext, default_schedule
from ddpm_check.montecarlo.variants import Variant, swap_symbol

VARIANTS = (
    Variant("loop_eps_coef_one_step_off",
            "the fast loop (only) reads eps_coef one index off, as an index slip in an optimised loop",
            sim="loop_index_slip"),
    Variant("loop_skips_last_step",
            "the fast loop stops before index 0 (paper t = 1)",
            sim="loop_skip_last"),
    Variant("loop_noise_at_last_step",
            "the fast loop adds noise of variance beta_1 at index 0",
            sim="loop_last_noise"),
    Variant("loop_noise_left_out_at_t2",
            "the fast loop draws the noise of index 1 (paper t = 2) but does not add it",
            sim="loop_drop_noise"),
    Variant("linear_schedule_spacing_off",
            "the linear betas spaced as linspace(start, end, T + 1)[1:] (beta_1 is not beta_start)",
            sim="schedule_spacing"),
    Variant("loss_model_told_t_plus_one",
            "the loss noises x_0 at t but conditions the model on t + 1",
            sim="loss_t_plus_one"),
    Variant("helper_x0_sqrt_dropped",
            "predict_x0_from_eps divides by alpha_bar_t where sqrt(alpha_bar_t) belongs",
            sim="helper_x0_sqrt_dropped"),
    Variant("graph_noise_drawn_once",
            "the CUDA-graph step replays the noise of its first step at every step (its buffer never refilled)",
            sim="graph_noise_once"),
    Variant("graph_index_baked_in",
            "the CUDA-graph step reads its coefficients at the index it was recorded with (t = T) at every replay",
            sim="graph_index_baked"),
    Variant("compiled_model_in_bfloat16",
            "the compiled path runs the model in bfloat16 (as autocast does on CUDA) against a float32 reference",
            sim="compiled_bf16"),
    Variant("expected_mean_alpha_for_alpha_bar",
            "the expected mean with alpha_t where alpha_bar_t belongs",
            results=swap_symbol("mean-eps", ["mu_tilde_t_eps"], "alpha_bar_t", "alpha_t")),
)


def _broken_loop(diffusion, kind: str):
    """A copy of p_sample_loop's eager arithmetic with one deliberate mistake (variants only)."""
    import torch

    @torch.no_grad()
    def loop(model, shape, generator):
        T = diffusion.T
        view = (1,) * (len(shape) - 1)
        x = torch.randn(shape, generator=generator, dtype=diffusion.dtype)
        last = 1 if kind == "loop_skip_last" else 0
        for i in reversed(range(last, T)):
            t = torch.full((shape[0],), i, dtype=torch.long)
            eps = model(x, t)
            j = min(i + 1, T - 1) if kind == "loop_index_slip" else i
            x_new = torch.addcmul(x, eps, diffusion.eps_coef[j].reshape(view), value=-1.0)
            x_new.mul_(diffusion.sqrt_recip_alphas[i])
            if i > 0:
                noise = torch.randn(shape, generator=generator, dtype=diffusion.dtype)
                if not (kind == "loop_drop_noise" and i == 1):
                    x_new.addcmul_(noise, diffusion.posterior_std[i].reshape(view))
            elif kind == "loop_last_noise":
                noise = torch.randn(shape, generator=generator, dtype=diffusion.dtype)
                x_new.add_(noise * float(diffusion.betas[0]) ** 0.5)
            x = x_new
        return x

    return loop


def run(ctx: CheckContext) -> None:
    """The verify engine's sections on our float32 GaussianDiffusion (ctx.samples values per t in
    the step's variance rows)."""
    from ddpm_check.verify import engine, targets
    from ddpm_check.verify.builtin import OurDiffusion

    sched = default_schedule(ctx.user_schedule)
    ours = OurDiffusion(sched.config)
    if ctx.sim in ("loop_index_slip", "loop_skip_last", "loop_last_noise", "loop_drop_noise"):
        ours.sample = _broken_loop(ours.diffusion, ctx.sim)
    elif ctx.sim == "schedule_spacing":  # the arrays a wrong linspace gives, under the linear claim
        import numpy as np

        from ddpm_check.schedules import Schedule

        c = sched.config
        wrong = Schedule.from_betas(np.linspace(c.beta_start, c.beta_end, c.T + 1)[1:])
        claim = ours.schedule_claim
        ours = OurDiffusion(wrong.config)
        ours.schedule_claim = claim
    elif ctx.sim == "loss_t_plus_one":
        d = ours.diffusion
        ours.loss = lambda model, x_0, t, noise: d.loss(
            lambda x, tt: model(x, (tt + 1).clamp(max=d.T - 1)), x_0, t=t, noise=noise)
    tgt = targets.from_object(ours, "ddpm_check")
    for m in ("ddim_step", "ddim_sample"):  # DDIM's loop has its own check (ddim), every visited step held
        tgt.methods.pop(m, None)
    engine.run_sections(ctx, tgt, ctx.samples)
    _fast_loops(ctx, ours, tgt, engine)
    _helpers(ctx, ours.diffusion, engine)


#: torch.compile'd loop models by (T, shape), or the reason compiling failed: compiling costs a
#: few seconds once per process, not once per run of the check
_COMPILED: dict[tuple, object] = {}


def _compiled(model, T: int, shape: tuple[int, ...]):
    """``model`` compiled as ``sample --compile`` compiles a network (ddpm_check.sample), or the
    one-line reason it could not be."""
    import torch

    from ddpm_check.errors import first_line
    from ddpm_check.sample import compiled_eps_model

    key = (T, shape)
    if key not in _COMPILED:
        try:
            _COMPILED[key] = compiled_eps_model(model, torch.device("cpu"), shape)
        except Exception as exc:  # no C++ compiler, an unsupported Python, torch.compile disabled, ...
            _COMPILED[key] = first_line(exc, typed=True)
    return _COMPILED[key]


def _fast_loops(ctx: CheckContext, ours, tgt, engine) -> None:
    """p_sample_loop's other two paths held to p_sample replayed with the same noise stream, as the
    engine's sample row holds the eager loop: the CUDA-graph loop's step (static buffers, every
    coefficient gathered by a device-side index; replayed eagerly where there is no CUDA, captured
    and replayed as a graph where there is), and the loop driving a torch.compile'd model."""
    import torch

    d = ours.diffusion
    T, shape, seed = d.T, engine.SAMPLER_SHAPE, ctx.seed
    model = _LOOP_MODELS.setdefault(T, engine.loop_model(T))
    try:
        x_steps = engine.replay_steps(tgt, model, shape, seed)
    except engine.TargetError as exc:
        engine._failed_call(ctx, "the same T steps one by one", f"T={T}", exc, group="fast loops")
        return
    if ctx.sim in ("graph_noise_once", "graph_index_baked"):
        d = _broken_graph_step(d, ctx.sim)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x_g, _ = d._p_sample_loop_graphed(model, d._start(shape, g, None), g, None, None, capture_graph=False)
    engine.loop_equals_steps(ctx, "graph-step loop (static buffers, device-side index), replayed eagerly = p_sample's "
                             "steps", tgt, x_g, x_steps, group="fast loops",
                             note="the arithmetic p_sample_loop(graph=True) records; the capture itself needs CUDA")
    if torch.cuda.is_available():
        _captured_graph(ctx, d, model, tgt, engine)
    else:
        ctx.notes.append("paths: capturing the CUDA graph itself: not available here (no CUDA); its step's "
                         "arithmetic is the graph-step row")
    fast = _compiled(model, T, shape)
    if isinstance(fast, str):
        ctx.notes.append(f"paths: the compiled path (sample --compile): not available here ({fast})")
        return
    if ctx.sim == "compiled_bf16":
        fast = (lambda f: lambda x, t: f(x, t).to(torch.bfloat16).to(x.dtype))(fast)
    torch.manual_seed(seed)
    x_c = d.p_sample_loop(fast, shape, generator=torch.Generator().manual_seed(seed))
    engine.loop_equals_steps(ctx, "p_sample_loop with the model torch.compile'd as sample --compile does = p_sample's "
                             "steps with the eager model", tgt, x_c, x_steps, group="fast loops",
                             note="on the CPU (no bf16 autocast); the compiled model's rounding is within the budget")


def _captured_graph(ctx: CheckContext, d, model, tgt, engine) -> None:
    """Where CUDA is present: the loop with its step captured as a CUDA graph and replayed T times
    against the eager loop on the same device with the same generator (the eager loop is the one
    the sample row holds to p_sample).  A capture that fails is a note with its reason."""
    import torch

    from ddpm_check.diffusion import GaussianDiffusion
    from ddpm_check.errors import first_line

    dc = GaussianDiffusion(d.schedule, dtype=d.dtype, device="cuda", prediction=d.prediction)
    shape, seed = engine.SAMPLER_SHAPE, ctx.seed
    g = torch.Generator("cuda").manual_seed(seed)
    try:
        x_cap, _ = dc._p_sample_loop_graphed(model, dc._start(shape, g, None), g, None, None, capture_graph=True)
    except RuntimeError as exc:
        ctx.notes.append(f"paths: capturing the CUDA graph failed here ({first_line(exc)}); not held")
        return
    x_eager = dc.p_sample_loop(model, shape, generator=torch.Generator("cuda").manual_seed(seed))
    engine.loop_equals_steps(ctx, "p_sample_loop(graph=True), the step captured and replayed on CUDA = the eager loop "
                             "on CUDA", tgt, x_cap.cpu(), x_eager.cpu(), group="fast loops",
                             note="the same generator on the device; the eager loop is held to p_sample above")


#: one loop model per T: torch.compile's cache belongs to the function it compiled
_LOOP_MODELS: dict[int, object] = {}


def _broken_graph_step(diffusion, kind: str):
    """``diffusion`` with a deliberately wrong graph step (variants only): the noise buffer of the
    first step reused, or the coefficients of the index the step was recorded at."""
    import copy

    d = copy.copy(diffusion)
    orig = type(diffusion)._graph_step
    first: dict = {}

    def step(model, x, noise, i_dev):
        if kind == "graph_noise_once":
            first.setdefault("noise", noise.clone())
            return orig(d, model, x, first["noise"], i_dev)
        first.setdefault("i", i_dev.clone())
        return _baked(d, model, x, noise, i_dev, first["i"])

    d._graph_step = step
    return d


def _baked(d, model, x, noise, i_dev, i_rec):
    """One graph step whose model sees the live index but whose coefficients are those of i_rec."""
    view = (1,) * (x.ndim - 1)
    out = model(x, i_dev.expand(x.shape[0]))
    x_new = d._step_mean(x, out, lambda name: getattr(d, name).index_select(0, i_rec).reshape(view))
    x_new.addcmul_(noise, d.posterior_std.index_select(0, i_rec).reshape(view))
    x.copy_(x_new)


def _helpers(ctx: CheckContext, diffusion, engine) -> None:
    """Exact rows for the public helpers outside the sampling path: ``predict_x0_from_eps`` against
    the derivation's x_0_from_eps (mean-eps), and ``p_mean_variance(clip_denoised=True)``: its mean is
    the posterior mean (eq. 7) at the clipped x0_hat, its pred_x0 that clipped value."""
    import numpy as np
    import torch

    ref = engine.Reference(diffusion.schedule.betas, diffusion.schedule.alphas, diffusion.schedule.alphas_cumprod,
                           diffusion.schedule.alphas_cumprod_prev)
    fm, fp = ctx.formulas("mean-eps"), ctx.formulas("posterior")
    T = diffusion.T
    g = torch.Generator().manual_seed(ctx.seed ^ 0x5EED)
    i = torch.arange(T).repeat_interleave(4)
    shape = (i.numel(), *engine.STEP_SHAPE)
    x = torch.randn(shape, generator=g) * 1.5
    eps = torch.randn(shape, generator=g)
    if ctx.sim == "helper_x0_sqrt_dropped":
        ab = torch.as_tensor(diffusion.schedule.alphas_cumprod, dtype=torch.float32)[i].reshape(-1, 1, 1, 1)
        x0 = (x - (1 - ab).sqrt() * eps) / ab  # the variant: alpha_bar where sqrt(alpha_bar) belongs
    else:
        x0 = diffusion.predict_x0_from_eps(x, i, eps)
    view = (-1, 1, 1, 1)
    inp = {k: np.asarray(v).reshape(view) for k, v in ref.inputs(i.numpy()).items()}
    xd, ed = x.double().numpy(), eps.double().numpy()
    want = np.asarray(fm["x_0_from_eps"](x_t=xd, eps=ed, **inp))
    sab = np.sqrt(inp["alpha_bar_t"])
    scale = (np.abs(xd) + np.sqrt(1 - inp["alpha_bar_t"]) * np.abs(ed)) / sab
    u = engine.unit_roundoff("float32")
    engine._exact(ctx, "predict_x0_from_eps = (x_t - sqrt(1 - alpha_bar_t) eps)/sqrt(alpha_bar_t)", f"t=1..{T}",
                  "derivation mean-eps", x0.double().numpy(), want, scale, u, engine.BUDGET["forward"],
                  group="predict_x0_from_eps")
    out = diffusion.p_mean_variance(lambda xt, t: eps, x, i, clip_denoised=True)
    clipped = np.clip(want, -1.0, 1.0)
    mean_want = np.asarray(fp["mu_tilde_t"](x_0=clipped, x_t=xd, **inp))
    c1, c2 = np.asarray(fp["posterior_mean_coef1"](**inp)), np.asarray(fp["posterior_mean_coef2"](**inp))
    # near the clip boundary float32 rounding may fall on either side: those elements are left out
    keep = np.abs(np.abs(want) - 1.0) > 1e-4 * scale
    # an unclipped x0_hat carries x0_hat's own rounding (its scale) into the mean; a clipped one is exact
    mscale = c1 * np.abs(clipped) + c2 * np.abs(xd) + c1 * np.where(np.abs(want) < 1.0, scale, 0.0)
    engine._exact(ctx, "p_mean_variance(clip_denoised=True): mean = mu_tilde_t(x_t, clip(x0_hat))  (eq. 7)",
                  f"t=1..{T}", "derivation posterior", out["mean"].double().numpy()[keep], mean_want[keep],
                  mscale[keep], u, engine.BUDGET["step"], group="clip_denoised")
    engine._exact(ctx, "p_mean_variance(clip_denoised=True): pred_x0 = clip(x0_hat)", f"t=1..{T}",
                  "derivation mean-eps", out["pred_x0"].double().numpy()[keep], clipped[keep],
                  np.maximum(scale, 1.0)[keep], u, engine.BUDGET["forward"], group="clip_denoised")
