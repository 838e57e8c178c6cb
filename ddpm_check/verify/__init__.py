"""``ddpm-check verify``: one verification engine for any DDPM implementation.

**The protocol.**  A target is any object exposing some of

* ``betas`` and/or ``alphas_cumprod``: arrays of length T (numpy or torch, any float dtype), index
  i holding paper step t = i + 1; optionally ``schedule_claim`` = ``{"kind": "linear",
  "beta_start": b1, "beta_end": bT}`` or ``{"kind": "cosine", "s": 0.008}``, the schedule it claims;
* ``q_sample(x_0, t, noise) -> x_t``;
* ``step(eps, t, x_t, generator) -> x_{t-1}``: one reverse step for a batch, t may mix values;
  its noise drawn from ``generator`` (a ``torch.Generator``);
* ``sample(model, shape, generator) -> x_0``: the whole loop, calling ``model(x_t, t) -> eps``;
  x_T drawn first from ``generator`` (``torch.randn(shape, generator=generator)``), then each
  step's noise from it;
* ``loss(model, x_0, t, noise)``: the training loss of one batch;
* ``ddim_step(eps, t, t_prev, x_t, eta, generator) -> x_prev`` (t_prev < 0: after the last visit,
  abar_prev = 1) and optionally ``ddim_sample(model, shape, steps, eta, generator)`` (leading spacing);
* optionally ``timestep_base`` (0, the default: t holds 0-based indices, as ``ddpm_check``,
  guided-diffusion and diffusers; 1: paper steps), ``variance`` (``"beta_tilde"``, the
  default, or ``"beta"``: Ho et al.'s two choices of sigma_t^2) and ``prediction`` (``"eps"``,
  the default, ``"x0"`` or ``"v"``: what the model output given to step, sample and loss is).

Tensors are torch ``[N, C, H, W]``, t a long tensor ``[N]``.  Every capability found gets its rows
(:mod:`ddpm_check.verify.engine`); a missing one is reported "not provided", never a pass.  A
target is named by a spec (:func:`ddpm_check.verify.targets.load`): ``ddpm_check``, ``source``,
``path/to/file.py:NAME`` or ``package.module:NAME``.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"verify": "ddpm_check.verify.engine", "VerifyReport": "ddpm_check.verify.engine",
         "load": "ddpm_check.verify.targets", "Target": "ddpm_check.verify.targets",
         "TargetError": "ddpm_check.verify.targets"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_LAZY)
