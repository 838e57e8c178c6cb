"""Check ``paths``: the engine of ``ddpm-check verify`` run on ddpm_check's own paths, so that the
code ``train`` and ``sample`` actually run is held to the derivations, not only the reference step.

The target is ``GaussianDiffusion`` in float32 (as training and sampling run it) on the check's
schedule: its arrays and claimed schedule, ``q_sample`` at every t, ``p_sample`` (mean exact at
every t, no noise at t = 1 per element, the noise's variance per t and pooled), ``p_sample_loop``
(the fast in-place loop) against ``p_sample`` replayed with the same noise stream, and ``loss``
(the t the model is given).  The CUDA-graph loop is not run here (a note says so); the tests hold
its static step to the eager loop on the CPU.  See :mod:`ddpm_check.verify.engine`.
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
    import torch

    from ddpm_check.verify import engine, targets
    from ddpm_check.verify.builtin import OurDiffusion

    sched = default_schedule(ctx.user_schedule)
    ours = OurDiffusion(sched.config)
    if ctx.sim in ("loop_index_slip", "loop_skip_last", "loop_last_noise"):
        ours.sample = _broken_loop(ours.diffusion, ctx.sim)
    tgt = targets.from_object(ours, "ddpm_check")
    for m in ("ddim_step", "ddim_sample"):  # DDIM's loop has its own check (ddim), every visited step held
        tgt.methods.pop(m, None)
    engine.run_sections(ctx, tgt, ctx.samples)
    where = "no CUDA here" if not torch.cuda.is_available() else "not yet held by this check"
    ctx.notes.append(f"paths: the CUDA-graph loop (p_sample_loop(graph=True)) was not run ({where}); the compiled "
                     "and graph-step loops are held to the eager one by tests/test_fast_paths.py")
