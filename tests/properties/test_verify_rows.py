"""Property tests of verify's deterministic rows over random valid schedules and batch sizes: a
correct target always passes them, and each injected mistake always fails its row.

The target here is written from Ho et al.'s equations (eq. 4, eq. 11, Alg. 2), independently of
ddpm_check's code; ``mistake`` changes one thing in it.
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ddpm_check.verify import engine, targets

#: the groups of exact (deterministic) rows
EXACT_GROUPS = {"alphas_cumprod", "claimed schedule", "q_sample", "mixed t", "mean", "last step", "sample",
                "loss t", "loss x_t"}


class Target:
    def __init__(self, betas: np.ndarray, mistake: str | None = None, k: int = 1):
        self.mistake = mistake
        self.k = k  # the step index a one-step mistake hits
        b = np.asarray(betas, dtype=np.float64)
        ab = np.cumprod(1.0 - b)
        self.betas = b
        self.alphas_cumprod = ab
        self.schedule_claim = None
        self._b, self._ab = torch.from_numpy(b), torch.from_numpy(ab)
        self._abp = torch.from_numpy(np.concatenate([[1.0], ab[:-1]]))

    def _g(self, a, t, x):
        return a[t].reshape(-1, *([1] * (x.dim() - 1))).to(torch.float64)

    def q_sample(self, x_0, t, noise):
        ab = self._g(self._ab, t, x_0)
        b = (1 - ab) if self.mistake == "q_variance_for_std" else (1 - ab).sqrt()
        return ab.sqrt() * x_0 + b * noise

    def step(self, eps, t, x_t, generator, add_noise: bool = True):
        T = self._b.numel()
        te = (t + 1).clamp(max=T - 1) if self.mistake == "eps_coef_index_shift" else t
        b, a = self._g(self._b, t, x_t), 1 - self._g(self._b, t, x_t)
        mean = (x_t - b / (1 - self._g(self._ab, te, x_t)).sqrt() * eps) / a.sqrt()
        var = b * (1 - self._g(self._abp, t, x_t)) / (1 - self._g(self._ab, t, x_t))
        if self.mistake == "noise_at_last_step":  # sigma_1^2 = beta_1 instead of 0
            var = torch.where(t.reshape(-1, *([1] * (x_t.dim() - 1))) == 0, b, var)
        if self.mistake == "batch_decides_by_first_t" and int(t[0]) == 0:  # the source's `if t == 0`
            var = torch.zeros_like(var)
        z = torch.randn(x_t.shape, generator=generator, dtype=torch.float64)
        return mean + var.sqrt() * z if add_noise else mean

    def sample(self, model, shape, generator):
        T = self._b.numel()
        x = torch.randn(shape, generator=generator)
        steps = range(T - 1) if self.mistake == "sample_skips_last_step" else range(T)
        for i in reversed(steps):
            t = torch.full((shape[0],), i, dtype=torch.long)
            dropped = self.mistake == "sample_drops_noise_once" and i == self.k  # drawn, not added
            x = self.step(model(x, t), t, x, generator, add_noise=not dropped)
        return x

    def loss(self, model, x_0, t, noise):
        T = self._b.numel()
        shown = (t + 1).clamp(max=T - 1) if self.mistake == "loss_t_plus_one" else t
        return torch.mean((noise - model(self.q_sample(x_0, t, noise), shown)) ** 2)


schedules = st.integers(2, 40).flatmap(
    lambda T: st.lists(st.floats(1e-4, 0.3, allow_subnormal=False), min_size=T, max_size=T).map(np.array))


def _exact_failures(betas, mistake=None, k: int = 1, groups=EXACT_GROUPS):
    tgt = targets.from_object(Target(betas, mistake, k), f"property target ({mistake})")
    rep = engine.verify(tgt, samples=64)
    return {(r.name, x.group) for r in rep.results for x in r.rows
            if x.group in groups and x.role == "test" and not x.passed}


SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(schedules)
def test_a_correct_target_passes_every_exact_row(betas):
    assert _exact_failures(betas) == set()


@SETTINGS
@given(schedules, st.sampled_from([
    ("q_variance_for_std", ("q_sample", "q_sample")),
    ("eps_coef_index_shift", ("step", "mean")),
    ("noise_at_last_step", ("step", "last step")),
    ("loss_t_plus_one", ("loss", "loss t")),
]))
def test_each_injected_mistake_fails_its_row(betas, case):
    mistake, row = case
    if mistake == "eps_coef_index_shift" and np.allclose(np.cumprod(1 - betas)[:-1], np.cumprod(1 - betas)[1:], rtol=1e-3):
        return  # pragma: no cover - alpha_bar cannot stay flat for betas >= 1e-4
    assert row in _exact_failures(betas, mistake)


@SETTINGS
@given(schedules)
def test_a_sampler_that_skips_a_step_fails_the_sampler_row(betas):
    assert ("sample", "sample") in _exact_failures(betas, "sample_skips_last_step")


@SETTINGS
@given(schedules, st.data())
def test_a_sampler_that_leaves_the_noise_out_of_one_step_fails_the_sampler_row(betas, data):
    # the noise is drawn (the stream stays aligned) but not added at one step k >= 1 (paper t = k + 1)
    k = data.draw(st.integers(1, betas.size - 1))
    assert ("sample", "sample") in _exact_failures(betas, "sample_drops_noise_once", k)


@SETTINGS
@given(schedules)
def test_a_step_that_decides_t_0_for_the_whole_batch_fails_the_variance_rows(betas):
    # The mixed batch starts at t = 1: a step that decides "last step, no noise" for the whole
    # batch from t[0] runs without an error (the "mixed t" row is about calls that raise, as the
    # source's `if t == 0` does), and adds no noise at any t.  A sample variance of exactly 0 where
    # beta_tilde_t > 0 is expected is rejected by every t's variance row whatever the draw.
    assert ("step", "variance") in _exact_failures(betas, "batch_decides_by_first_t", groups={"variance"})
