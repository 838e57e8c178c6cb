"""The DDPM math on tensors (Ho et al. 2020).  Not an nn.Module: the model is passed in.

A *model* is any callable ``model(x_t, t) -> prediction`` with x_t [N, ...] and t [N] long holding
0-based step indices (array index i <-> paper step t = i + 1, see ddpm_check.schedules).  What it
predicts is the diffusion's ``prediction`` (derivation ``parametrizations``; diffusers'
``prediction_type`` in brackets):

    "eps" (epsilon)      the noise eps of x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps   (Ho et al. eq. 14)
    "x0"  (sample)       x_0 itself
    "v"   (v_prediction) v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0    (Salimans & Ho 2022, sec. 4)

A SimpleUnet, an exact denoiser (``GaussianMixture.predictor``) or a lambda all work.  With a
zero-terminal-SNR schedule (abar_T = 0, ``ScheduleConfig(zero_snr=True)``) an eps-prediction cannot
give x_0 at t = T (it divides by sqrt(abar_T) = 0), so that pair is refused.

Every per-step coefficient lives on the device as a [T] tensor, converted once from the float64
schedule at construction, and is gathered by t: nothing in the sampling loop reads a tensor value
back to the host.  Use ``dtype=torch.float64`` for Monte Carlo checks, float32 for training.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np
import torch

from ddpm_check.errors import DDPMCheckError, first_line
from ddpm_check.schedules import Schedule

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LOSS_KINDS = ("l2", "l1")
#: what a model may predict (derivation ``parametrizations``)
PREDICTIONS = ("eps", "x0", "v")
#: the same choices under diffusers' ``prediction_type`` names
DIFFUSERS_PREDICTION_TYPES = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}


def check_prediction(prediction: Any, name: str = "prediction") -> str:
    """``prediction`` if it is one of PREDICTIONS, else a DDPMCheckError naming the value."""
    if prediction not in PREDICTIONS:
        raise DDPMCheckError(f"unknown {name} {prediction!r}; choose one of {', '.join(PREDICTIONS)}")
    return prediction


class GaussianDiffusion:
    """Forward process q, posterior q(x_{t-1} | x_t, x_0), and the reverse process p_theta.

    Attributes: ``schedule``, ``T``, ``device``, ``dtype``, ``prediction`` (what the model
    predicts: "eps", "x0" or "v"), and one [T] tensor per schedule array (``betas``,
    ``alphas_cumprod``, ``posterior_variance``, ...) plus ``eps_coef`` = beta_t / sqrt(1 - alpha_bar_t)
    and ``posterior_std`` = sqrt(beta_tilde_t) (exactly 0 at index 0).  On a zero-terminal-SNR
    schedule ``sqrt_recip_alphas`` is inf at index T - 1 (alpha_T = 0); the x0- and v-forms never read it.
    """

    def __init__(self, schedule: Schedule, device: Any = "cpu", dtype: torch.dtype = torch.float32,
                 prediction: str = "eps") -> None:
        if not isinstance(schedule, Schedule):
            raise DDPMCheckError(f"GaussianDiffusion needs a Schedule, got {type(schedule).__name__}")
        self.prediction = check_prediction(prediction)
        if prediction == "eps" and schedule.alphas_cumprod[-1] == 0.0:
            raise DDPMCheckError("eps-prediction is undefined on a zero-terminal-SNR schedule: at t = T, "
                                 "x_0 = (x_T - eps)/sqrt(abar_T) divides by 0; predict v instead")
        if dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            raise DDPMCheckError(f"dtype must be a floating torch dtype, got {dtype!r}")
        self.schedule = schedule
        self.T = schedule.T
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError):
            raise DDPMCheckError(f"unknown device {device!r}; e.g. 'cpu', 'cuda' or 'cuda:0'") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise DDPMCheckError(f"device {device!r} requested but CUDA is not available")
        self.dtype = dtype
        arrays = dict(schedule.arrays())
        # Derived in float64 before the single cast to dtype.
        arrays["eps_coef"] = schedule.betas / schedule.sqrt_one_minus_alphas_cumprod  # eq. 11 (1 at a zero-SNR t = T)
        std = np.sqrt(schedule.posterior_variance)
        std[0] = 0.0  # no noise at the last reverse step (index 0, paper t = 1)
        arrays["posterior_std"] = std
        self._names = tuple(arrays)
        for name, a in arrays.items():
            setattr(self, name, torch.as_tensor(np.array(a, dtype=np.float64)).to(self.device, dtype))

    # ---- helpers ------------------------------------------------------------------------------
    def coefficients(self) -> dict[str, torch.Tensor]:
        """All [T] coefficient tensors by name."""
        return {name: getattr(self, name) for name in self._names}

    @staticmethod
    def _extract(a: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
        """a[t] reshaped to [N, 1, ..., 1] (ndim dims in all) for broadcasting against x."""
        return a[t].reshape(t.shape[0], *((1,) * (ndim - 1)))

    def _check_t(self, t: Any, x: torch.Tensor, name: str = "t") -> torch.Tensor:
        """Validate t (an int or an [N] integer tensor of 0-based steps); returns long [N] on x's device."""
        n = x.shape[0]
        if isinstance(t, (int, np.integer)) and not isinstance(t, bool):
            if not 0 <= int(t) < self.T:
                raise DDPMCheckError(f"{name} = {int(t)} is out of range; 0-based steps 0..{self.T - 1} are allowed")
            return torch.full((n,), int(t), dtype=torch.long, device=x.device)
        if not isinstance(t, torch.Tensor):
            raise DDPMCheckError(f"{name} must be an int or a long tensor of shape [N], got {type(t).__name__}")
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise DDPMCheckError(f"{name} must hold integer (0-based) steps, got dtype {t.dtype}")
        if t.shape != (n,):
            raise DDPMCheckError(f"{name} must have shape [N] = [{n}] to match x, got {list(t.shape)}")
        t = t.to(device=x.device, dtype=torch.long)
        if t.device.type == "cpu" and n:  # a range check would force a device sync elsewhere
            lo, hi = int(t.min()), int(t.max())
            if lo < 0 or hi >= self.T:
                bad = lo if lo < 0 else hi
                raise DDPMCheckError(f"{name} = {bad} is out of range; 0-based steps 0..{self.T - 1} are allowed")
        return t

    @staticmethod
    def _check_x(x: Any, name: str = "x") -> None:
        """DDPMCheckError unless x is a floating torch.Tensor with ndim >= 1 (metadata only, no sync)."""
        if not isinstance(x, torch.Tensor):
            raise DDPMCheckError(f"{name} must be a floating torch.Tensor of shape [N, ...], got {type(x).__name__}")
        if not x.dtype.is_floating_point:
            raise DDPMCheckError(f"{name} must be a floating torch.Tensor of shape [N, ...], got dtype {x.dtype}")
        if x.ndim < 1:
            raise DDPMCheckError(f"{name} must be a floating torch.Tensor of shape [N, ...], got a 0-d tensor")

    def _check_output(self, out: Any, x_t: torch.Tensor) -> None:
        """DDPMCheckError unless the model's output is a tensor with x_t's shape (no broadcasting)."""
        if not isinstance(out, torch.Tensor) or out.shape != x_t.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise DDPMCheckError(f"the model must return its {self.prediction} prediction with the shape of x_t "
                                 f"{tuple(x_t.shape)}, got {got}")

    @staticmethod
    def _check_shape(shape: Any) -> tuple[int, ...]:
        """shape as a tuple of ints, or DDPMCheckError unless it is a non-empty sequence of ints >= 1."""
        ok = isinstance(shape, (list, tuple)) and len(shape) >= 1 and all(
            isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1 for s in shape)
        if not ok:
            raise DDPMCheckError(f"shape must be a non-empty list of positive integer sizes, got {shape!r}")
        return tuple(int(s) for s in shape)

    @staticmethod
    def _check_same_shape(**tensors: torch.Tensor) -> None:
        shapes = {k: tuple(v.shape) for k, v in tensors.items()}
        if len(set(shapes.values())) > 1:
            raise DDPMCheckError(f"shapes must agree, got {shapes}")

    # ---- forward process ----------------------------------------------------------------------
    def q_sample(self, x_0: torch.Tensor, t: Any, noise: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample x_t ~ q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)   (Ho et al. eq. 4).

        x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, eps = ``noise`` or drawn from
        ``generator``.  Shapes: x_0 [N, ...], t [N] (0-based), noise like x_0 -> x_t like x_0.
        """
        self._check_x(x_0, "x_0")
        t = self._check_t(t, x_0)
        if noise is None:
            noise = torch.randn(x_0.shape, generator=generator, dtype=x_0.dtype, device=x_0.device)
        else:
            self._check_same_shape(x_0=x_0, noise=noise)
        return (self._extract(self.sqrt_alphas_cumprod, t, x_0.ndim) * x_0
                + self._extract(self.sqrt_one_minus_alphas_cumprod, t, x_0.ndim) * noise)

    def q_posterior_mean_variance(self, x_0: torch.Tensor, x_t: torch.Tensor, t: Any
                                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q(x_{t-1} | x_t, x_0) = N(mu_tilde_t, beta_tilde_t I)   (Ho et al. eqs. 6-7).

        mu_tilde_t = coef1 x_0 + coef2 x_t, coef1 = sqrt(alpha_bar_{t-1}) beta_t/(1 - alpha_bar_t),
        coef2 = sqrt(alpha_t)(1 - alpha_bar_{t-1})/(1 - alpha_bar_t) (improved-diffusion's names);
        beta_tilde_t = (1 - alpha_bar_{t-1})/(1 - alpha_bar_t) beta_t.
        Shapes: x_0, x_t [N, ...], t [N] -> (mean, variance, log_variance), each [N, ...]
        (variance and log_variance are broadcast views; log_variance is the clipped log).
        """
        self._check_same_shape(x_0=x_0, x_t=x_t)
        t = self._check_t(t, x_t)
        nd = x_t.ndim
        mean = self._extract(self.posterior_mean_coef1, t, nd) * x_0 + self._extract(self.posterior_mean_coef2, t, nd) * x_t
        var = self._extract(self.posterior_variance, t, nd).expand(x_t.shape)
        log_var = self._extract(self.posterior_log_variance_clipped, t, nd).expand(x_t.shape)
        return mean, var, log_var

    def predict_x0_from_eps(self, x_t: torch.Tensor, t: Any, eps: torch.Tensor) -> torch.Tensor:
        """x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t), eq. 4 solved for x_0.

        Shapes: x_t, eps [N, ...], t [N] -> [N, ...].
        """
        self._check_same_shape(x_t=x_t, eps=eps)
        t = self._check_t(t, x_t)
        nd = x_t.ndim
        return (x_t - self._extract(self.sqrt_one_minus_alphas_cumprod, t, nd) * eps) / self._extract(
            self.sqrt_alphas_cumprod, t, nd)

    def predict_eps_from_x0(self, x_t: torch.Tensor, t: Any, x_0: torch.Tensor) -> torch.Tensor:
        """eps = (x_t - sqrt(alpha_bar_t) x_0) / sqrt(1 - alpha_bar_t), eq. 4 solved for eps.

        Shapes: x_t, x_0 [N, ...], t [N] -> [N, ...].
        """
        self._check_same_shape(x_t=x_t, x_0=x_0)
        t = self._check_t(t, x_t)
        nd = x_t.ndim
        return (x_t - self._extract(self.sqrt_alphas_cumprod, t, nd) * x_0) / self._extract(
            self.sqrt_one_minus_alphas_cumprod, t, nd)

    def get_velocity(self, x_0: torch.Tensor, noise: torch.Tensor, t: Any) -> torch.Tensor:
        """v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0 (Salimans & Ho 2022; diffusers' name).

        Shapes: x_0, noise [N, ...], t [N] -> [N, ...].
        """
        self._check_same_shape(x_0=x_0, noise=noise)
        t = self._check_t(t, x_0)
        nd = x_0.ndim
        return (self._extract(self.sqrt_alphas_cumprod, t, nd) * noise
                - self._extract(self.sqrt_one_minus_alphas_cumprod, t, nd) * x_0)

    def split_prediction(self, x_t: torch.Tensor, t: Any, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A model output read as this diffusion's ``prediction`` -> (x0_hat, eps_hat).

        eps: x0_hat = (x_t - sqrt(1 - abar) eps)/sqrt(abar); x0: eps_hat = (x_t - sqrt(abar) x0)/sqrt(1 - abar);
        v: x0_hat = sqrt(abar) x_t - sqrt(1 - abar) v and eps_hat = sqrt(abar) v + sqrt(1 - abar) x_t
        (derivation ``parametrizations``; the v-forms hold at abar = 0, where x0_hat = -v and eps_hat = x_t).
        Shapes: x_t, out [N, ...], t [N] -> two [N, ...].
        """
        self._check_output(out, x_t)
        t = self._check_t(t, x_t)
        nd = x_t.ndim
        sab = self._extract(self.sqrt_alphas_cumprod, t, nd)
        s1m = self._extract(self.sqrt_one_minus_alphas_cumprod, t, nd)
        if self.prediction == "eps":
            return (x_t - s1m * out) / sab, out
        if self.prediction == "x0":
            return out, (x_t - sab * out) / s1m
        return sab * x_t - s1m * out, sab * out + s1m * x_t

    # ---- reverse process ----------------------------------------------------------------------
    def p_mean_variance(self, model: Model, x_t: torch.Tensor, t: Any, clip_denoised: bool = False
                        ) -> dict[str, torch.Tensor]:
        """p_theta(x_{t-1} | x_t) = N(mu_theta(x_t, t), sigma_t^2 I) with sigma_t^2 = beta_tilde_t.

        eps-prediction: mu_theta = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_theta(x_t, t)) / sqrt(alpha_t)
        (Ho et al. eq. 11).  x0- and v-prediction: mu_theta = mu_tilde_t(x_t, x0_hat), the posterior
        mean (eq. 7) at the predicted x_0 (which eq. 11 equals for eps-prediction).
        With ``clip_denoised`` the predicted x_0 is clipped to [-1, 1] and the mean is the posterior
        mean mu_tilde_t(x_t, clip(x_0)) (eq. 7) instead; without clipping the two are equal.
        Shapes: x_t [N, ...], t [N] -> dict of mean, variance, log_variance, pred_x0, eps, all [N, ...]
        (eps is the predicted noise, converted from the model's output when it predicts x0 or v).
        """
        t = self._check_t(t, x_t)
        out = model(x_t, t)
        pred_x0, eps = self.split_prediction(x_t, t, out)
        nd = x_t.ndim
        if clip_denoised or self.prediction != "eps":
            if clip_denoised:
                pred_x0 = pred_x0.clamp(-1.0, 1.0)
            mean = (self._extract(self.posterior_mean_coef1, t, nd) * pred_x0
                    + self._extract(self.posterior_mean_coef2, t, nd) * x_t)
        else:
            mean = self._extract(self.sqrt_recip_alphas, t, nd) * (x_t - self._extract(self.eps_coef, t, nd) * eps)
        return {
            "mean": mean,
            "variance": self._extract(self.posterior_variance, t, nd).expand(x_t.shape),
            "log_variance": self._extract(self.posterior_log_variance_clipped, t, nd).expand(x_t.shape),
            "pred_x0": pred_x0,
            "eps": eps,
        }

    def p_sample(self, model: Model, x_t: torch.Tensor, t: Any, generator: torch.Generator | None = None,
                 noise: torch.Tensor | None = None) -> torch.Tensor:
        """One reverse step: x_{t-1} = mu_theta(x_t, t) + sigma_t z, z ~ N(0, I)   (Ho et al. Alg. 2, eq. 11).

        sigma_t^2 = beta_tilde_t; mu_theta as in :meth:`p_mean_variance` (eq. 11 for eps-prediction,
        the posterior mean at x0_hat for x0- and v-prediction).  No noise is added exactly where
        t == 0 (paper t = 1), per batch element, so one batch may mix timesteps (the source's
        ``if t == 0`` cannot).  ``noise`` (like x_t) replaces the draw from ``generator``.
        Shapes: x_t [N, ...], t [N] -> [N, ...].
        """
        self._check_x(x_t, "x_t")
        t = self._check_t(t, x_t)
        if noise is None:
            noise = torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype, device=x_t.device)
        else:
            self._check_same_shape(x_t=x_t, noise=noise)
        out = model(x_t, t)
        self._check_output(out, x_t)
        nd = x_t.ndim
        mean = self._step_mean(x_t, out, lambda name: self._extract(getattr(self, name), t, nd))
        # posterior_std[0] is exactly 0, so elements with t == 0 get mean + 0 * z = mean.
        return mean + self._extract(self.posterior_std, t, nd) * noise

    def _step_mean(self, x: torch.Tensor, out: torch.Tensor, coef: Callable[[str], torch.Tensor]) -> torch.Tensor:
        """mu_theta(x_t, t) from the model output, each coefficient array fetched as ``coef(name)``
        (already gathered at t and shaped to broadcast against x).  A new tensor; x is not modified."""
        if self.prediction == "eps":
            mean = torch.addcmul(x, out, coef("eps_coef"), value=-1.0)  # x_t - beta_t/sqrt(1-ab_t) eps
            return mean.mul_(coef("sqrt_recip_alphas"))  # eq. 11
        if self.prediction == "x0":
            x0 = out
        else:  # v: x0_hat = sqrt(ab_t) x_t - sqrt(1 - ab_t) v, defined at ab_T = 0 too
            x0 = coef("sqrt_alphas_cumprod") * x - coef("sqrt_one_minus_alphas_cumprod") * out
        return torch.addcmul(coef("posterior_mean_coef1") * x0, x, coef("posterior_mean_coef2"))  # eq. 7

    def _start(self, shape: tuple[int, ...], generator: torch.Generator | None, x_T: Any) -> torch.Tensor:
        """A sampling loop's x_T: ``x_T`` checked against ``shape``, or a draw from ``generator``."""
        if x_T is None:
            return torch.randn(shape, generator=generator, dtype=self.dtype, device=self.device)
        self._check_x(x_T, "x_T")
        if tuple(x_T.shape) != shape:
            raise DDPMCheckError(f"x_T has shape {list(x_T.shape)} but shape is {list(shape)}")
        return x_T.to(device=self.device, dtype=self.dtype)

    @torch.no_grad()
    def p_sample_loop(self, model: Model, shape: Iterable[int], generator: torch.Generator | None = None,
                      progress: Callable[[int, int], Any] | None = None, capture: Iterable[int] | None = None,
                      x_T: torch.Tensor | None = None, graph: bool = False):
        """Sample x_0 ~ p_theta by T reverse steps from x_T ~ N(0, I)   (Ho et al. Algorithm 2).

        Args:
            model: eps_theta(x_t [N, ...], t [N] long) -> [N, ...]; put a network in eval() mode first.
            shape: [N, ...] of the samples.
            generator: the source of x_T and of every step's noise (on the diffusion's device).
            progress: called as progress(step_done, T) after each step, step_done = 1..T.
            capture: 0-based steps i whose input x_t (paper t = i + 1, the tensor fed to the model
                with index i) is kept; i = T - 1 is x_T itself.  x_0 is the return value.
            x_T: a starting tensor instead of a draw from ``generator``.
            graph: on CUDA, record one reverse step (model call and update) as a CUDA graph and
                replay it T times, the step index living in a device tensor; this removes the
                per-step launch overhead of a few hundred kernels.  The model must be
                deterministic and free of side effects (eval mode).  Same draws and the same
                arithmetic as the eager loop; elsewhere (or if capturing fails) the eager loop runs.
        Returns:
            x_0 [N, ...], or (x_0, {i: x_{i+1}}) when ``capture`` is given.
        """
        shape = self._check_shape(shape)
        keep: set[int] | None = None
        if capture is not None:
            keep = set()
            for i in capture:
                if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= int(i) < self.T:
                    raise DDPMCheckError(f"capture step {i!r} is out of range; 0-based steps 0..{self.T - 1} are allowed")
                keep.add(int(i))
        x = self._start(shape, generator, x_T)
        if graph and self.device.type == "cuda":
            try:
                out = self._p_sample_loop_graphed(model, x, generator, progress, keep)
            except DDPMCheckError:
                raise
            except RuntimeError as exc:  # capture refused (e.g. a model that syncs with the host)
                import warnings

                warnings.warn(f"CUDA graph sampling unavailable ({first_line(exc)}); sampling eagerly")
            else:
                return out if keep is not None else out[0]
        n, nd = shape[0], len(shape)
        view = (1,) * (nd - 1)
        captured: dict[int, torch.Tensor] = {}
        noise = torch.empty(shape, dtype=self.dtype, device=self.device)  # refilled in place each step
        steps = torch.arange(self.T, dtype=torch.long, device=self.device)
        for i in reversed(range(self.T)):
            if keep is not None and i in keep:
                captured[i] = x  # never modified in place: each step makes a new x
            t = steps[i].expand(n)  # [N] view of one stored index: no allocation, never mutated
            out = model(x, t)
            self._check_output(out, x)  # shape metadata only: no device sync
            # Every element has step i: 0-d coefficient views broadcast without a gather.
            x_new = self._step_mean(x, out, lambda name: getattr(self, name)[i].reshape(view))
            if i > 0:  # a Python int: no device sync; index 0 adds no noise
                noise.normal_(generator=generator)
                x_new.addcmul_(noise, self.posterior_std[i].reshape(view))  # + sigma_t z
            x = x_new
            if progress is not None:
                progress(self.T - i, self.T)
        if keep is not None:
            return x, captured
        return x

    def _graph_step(self, model: Model, x: torch.Tensor, noise: torch.Tensor, i_dev: torch.Tensor) -> None:
        """One reverse step in place on static buffers, as p_sample_loop's eager step.

        x [N, ...] holds x_t and is overwritten by x_{t-1}; i_dev is a [1] long tensor holding the
        0-based step; noise [N, ...] holds z (any finite values at index 0, where sigma = 0 exactly).
        Every coefficient is gathered on the device by i_dev, so the step can be replayed as a
        CUDA graph for every i.
        """
        view = (1,) * (x.ndim - 1)
        t = i_dev.expand(x.shape[0])  # [N]
        out = model(x, t)
        self._check_output(out, x)  # host-side metadata: nothing is recorded in a CUDA graph
        x_new = self._step_mean(x, out, lambda name: getattr(self, name).index_select(0, i_dev).reshape(view))
        x_new.addcmul_(noise, self.posterior_std.index_select(0, i_dev).reshape(view))  # + sigma_t z
        x.copy_(x_new)

    def _p_sample_loop_graphed(self, model: Model, x_T: torch.Tensor, generator, progress, keep, capture_graph: bool = True):
        """p_sample_loop with one captured step replayed T times (eager replay if not capture_graph).

        Between replays only two tiny kernels run: the step index is written into i_dev and, for
        i > 0, the noise buffer is refilled from ``generator`` -- the same draws, in the same
        order, as the eager loop.  Returns (x_0, captured).
        """
        x = x_T.clone()  # static input/output buffer
        noise = torch.zeros_like(x)
        i_dev = torch.full((1,), self.T - 1, dtype=torch.long, device=x.device)
        step = lambda: self._graph_step(model, x, noise, i_dev)  # noqa: E731
        g = None
        if capture_graph:
            # Warm up on a side stream (cuDNN autotuning, lazy initialisation, compilation), then
            # record one step; the warm-up's writes to x are undone below.
            side = torch.cuda.Stream(device=x.device)
            side.wait_stream(torch.cuda.current_stream(x.device))
            with torch.cuda.stream(side):
                for _ in range(2):
                    step()
            torch.cuda.current_stream(x.device).wait_stream(side)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                step()
            x.copy_(x_T)
        captured: dict[int, torch.Tensor] = {}
        for i in reversed(range(self.T)):
            if keep is not None and i in keep:
                captured[i] = x.clone()
            i_dev.fill_(i)
            if i > 0:  # index 0 adds no noise and draws none, as the eager loop
                noise.normal_(generator=generator)
            if g is not None:
                g.replay()
            else:
                step()
            if progress is not None:
                progress(self.T - i, self.T)
        return x, captured

    @torch.no_grad()
    def ddim_sample_loop(self, model: Model, shape: Iterable[int], config: Any,
                         generator: torch.Generator | None = None,
                         progress: Callable[[int, int], Any] | None = None, capture: Iterable[int] | None = None,
                         x_T: torch.Tensor | None = None):
        """Sample x_0 by a DDIM run of S of the T steps (Song et al. 2021, eqs. 12 and 16).

        At each visited 0-based index i (``ddpm_check.ddim.plan``), with abar = alphas_cumprod[i] and
        abar_prev the next visit's (1 after the last):
        x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_theta + sigma z,
        x0_hat = (x_t - sqrt(1 - abar) eps_theta)/sqrt(abar), sigma = eta sqrt((1 - abar_prev)/(1 - abar))
        sqrt(1 - abar/abar_prev) (derivation ``ddim``); x0- and v-prediction give x0_hat and
        eps_theta by :meth:`split_prediction`'s conversions.  Noise is drawn only at visits with
        sigma > 0, in the order of ``p_sample_loop``'s draws, so with S = T and eta = 1 the two
        loops give the same x_0 from the same generator (to rounding).

        Args:
            config: a ``ddpm_check.ddim.DDIMConfig`` (steps, eta, spacing), or a ``DDIMPlan``
                whose coefficients are used as given (the checks pass deliberately wrong plans).
            capture: visited indices whose input x_t is kept (x_T itself for the first visit).
            The rest as :meth:`p_sample_loop`; progress is called as progress(k, S).
        Returns:
            x_0 [N, ...], or (x_0, {i: x at the visit of index i}) when ``capture`` is given.
        """
        from ddpm_check.ddim import DDIMConfig, DDIMPlan, plan

        if isinstance(config, DDIMPlan):
            p, config = config, config.config
        elif isinstance(config, DDIMConfig):
            p = plan(self.schedule.alphas_cumprod, config)
        else:
            raise DDPMCheckError(f"ddim_sample_loop needs a DDIMConfig, got {type(config).__name__}")
        shape = self._check_shape(shape)
        visited = {int(i) for i in p.timesteps}
        keep: set[int] | None = None
        if capture is not None:
            keep = {int(i) for i in capture}
            missing = sorted(keep - visited)
            if missing:
                raise DDPMCheckError(f"capture step(s) {missing[:5]} are not visited by this DDIM run "
                                     f"({config.steps} steps, {config.spacing} spacing)")
        x = self._start(shape, generator, x_T)
        n = shape[0]
        # every visit's coefficients and index on the device once, derived in float64 before the
        # cast: the loop only takes 0-d views (no host-to-device copy per step)
        coef = self._ddim_coefficients(p, self.device, self.dtype)
        steps = torch.as_tensor(p.timesteps, dtype=torch.long).to(self.device)
        captured: dict[int, torch.Tensor] = {}
        noise = torch.empty(shape, dtype=self.dtype, device=self.device)
        S = len(p.timesteps)
        for k, i in enumerate(p.timesteps.tolist()):
            if keep is not None and i in keep:
                captured[i] = x
            out = model(x, steps[k].expand(n))
            self._check_output(out, x)
            x_new = self._ddim_mean(x, out, coef[:, k])
            if p.sigma[k] > 0.0:  # a host float64: no device sync
                noise.normal_(generator=generator)
                x_new = x_new + noise * coef[4, k]  # + sigma z
            x = x_new
            if progress is not None:
                progress(k + 1, S)
        if keep is not None:
            return x, captured
        return x

    @torch.no_grad()
    def ddim_step(self, out: torch.Tensor, t: Any, t_prev: Any, x_t: torch.Tensor, eta: float = 0.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """One DDIM step from index t to index t_prev (< 0: after the last visit, abar_prev = 1),
        per batch element (Song et al. 2021, eqs. 12 and 16; derivation ``ddim``), with the
        arithmetic of :meth:`ddim_sample_loop`'s step: x_prev = sqrt(abar_prev) x0_hat +
        sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z.  Noise is drawn (one [N, ...] tensor from
        ``generator``) only if some element has sigma > 0.  Shapes: out, x_t [N, ...], t, t_prev [N].
        """
        self._check_x(x_t, "x_t")
        self._check_output(out, x_t)
        t = self._check_t(t, x_t)
        if not isinstance(t_prev, torch.Tensor) or t_prev.shape != t.shape:
            raise DDPMCheckError(f"t_prev must be a long tensor of shape {list(t.shape)}")
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= float(eta) <= 1.0:
            raise DDPMCheckError(f"eta must be a number in [0, 1], got {eta!r}")
        from ddpm_check.ddim import DDIMConfig, plan_from

        ti = t.cpu().numpy()
        tp = t_prev.to(torch.long).cpu().numpy()
        if (tp >= ti).any() or (tp >= self.T).any():
            raise DDPMCheckError("t_prev must be below t (a negative t_prev means after the last step)")
        ac = self.schedule.alphas_cumprod
        ab, ab_prev = ac[ti], np.where(tp < 0, 1.0, ac[np.clip(tp, 0, None)])
        p = plan_from(DDIMConfig(1, float(eta)), ti, ab, ab_prev)
        nd = x_t.ndim
        view = (-1,) + (1,) * (nd - 1)
        coef = self._ddim_coefficients(p, x_t.device, x_t.dtype).reshape(7, *view)  # per element
        x_new = self._ddim_mean(x_t, out, coef)
        if (p.sigma > 0.0).any():
            x_new = x_new + torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype, device=x_t.device) * coef[4]
        return x_new

    @staticmethod
    def _ddim_coefficients(p, device, dtype) -> torch.Tensor:
        """[7, S] for the visits of a DDIMPlan, derived in float64 before one cast: sqrt(1 - abar),
        1/sqrt(abar), sqrt(abar_prev), the direction coefficient, sigma, sqrt(abar), 1/sqrt(1 - abar)."""
        with np.errstate(divide="ignore"):  # 1/sqrt(abar) = inf at a zero-SNR t = T, read by eps-prediction only
            return torch.as_tensor(np.stack([np.sqrt(1.0 - p.alpha_bar), 1.0 / np.sqrt(p.alpha_bar),
                                             np.sqrt(p.alpha_bar_prev), p.direction_coef, p.sigma,
                                             np.sqrt(p.alpha_bar), 1.0 / np.sqrt(1.0 - p.alpha_bar)])
                                   ).to(device, dtype)

    def _ddim_mean(self, x: torch.Tensor, out: torch.Tensor, coef) -> torch.Tensor:
        """sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat (Song eq. 12) from the model
        output, with ``coef`` the 7 coefficients of :meth:`_ddim_coefficients` (each broadcastable)."""
        sqrt_1m_ab, rsqrt_ab, sqrt_ab_prev, direction, _, sqrt_ab, rsqrt_1m_ab = coef
        if self.prediction == "eps":
            eps, x0_hat = out, (x - sqrt_1m_ab * out) * rsqrt_ab  # Song eq. 9
        elif self.prediction == "x0":
            eps, x0_hat = (x - sqrt_ab * out) * rsqrt_1m_ab, out
        else:  # v (derivation ``parametrizations``), defined at abar = 0
            eps, x0_hat = sqrt_ab * out + sqrt_1m_ab * x, sqrt_ab * x - sqrt_1m_ab * out
        return x0_hat * sqrt_ab_prev + eps * direction

    # ---- training objective -------------------------------------------------------------------
    def loss(self, model: Model, x_0: torch.Tensor, t: Any = None, noise: torch.Tensor | None = None,
             kind: str = "l2", generator: torch.Generator | None = None, reduction: str = "mean") -> torch.Tensor:
        """L_simple = E_{t, x_0, eps} || target - model(sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps, t) ||^2   (Ho et al. eq. 14).

        The target is what the diffusion's ``prediction`` names: eps (eq. 14 itself), x_0, or
        v = sqrt(ab_t) eps - sqrt(1 - ab_t) x_0, each unweighted (derivation ``parametrizations``
        gives the weights that relate the three).  kind "l2": the squared error, averaged over all
        elements (eq. 14 divided by the dimension D); kind "l1": the source's mean absolute error.
        t defaults to uniform steps 0..T-1, noise to N(0, I), both drawn from ``generator``.
        reduction "mean" -> scalar, "none" -> [N] (the per-example mean over the non-batch dims).
        """
        if kind not in LOSS_KINDS:
            raise DDPMCheckError(f"unknown loss kind {kind!r}; choose one of {', '.join(LOSS_KINDS)}")
        if reduction not in ("mean", "none"):
            raise DDPMCheckError(f"unknown reduction {reduction!r}; choose one of mean, none")
        self._check_x(x_0, "x_0")
        n = x_0.shape[0]
        if n == 0:
            raise DDPMCheckError(f"loss needs at least one example, got an empty batch of shape {list(x_0.shape)}")
        if t is None:
            t = torch.randint(0, self.T, (n,), generator=generator, device=x_0.device)
        t = self._check_t(t, x_0)
        if noise is None:
            noise = torch.randn(x_0.shape, generator=generator, dtype=x_0.dtype, device=x_0.device)
        x_t = self.q_sample(x_0, t, noise=noise)
        out = model(x_t, t)
        self._check_output(out, x_0)
        if self.prediction == "eps":
            target = noise
        elif self.prediction == "x0":
            target = x_0
        else:
            target = self.get_velocity(x_0, noise, t)
        err = (out - target).abs() if kind == "l1" else (out - target).square()
        if reduction == "none":
            return err.reshape(n, -1).mean(dim=1)
        return err.mean()
