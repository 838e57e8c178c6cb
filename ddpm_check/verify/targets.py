"""What ``ddpm-check verify`` checks: a *target*, found from a spec and called through a guard.

A spec is ``ddpm_check`` (our own ``GaussianDiffusion``), ``source`` (the source blog's code as
written, ``ddpm_check.source``), ``path/to/file.py:NAME`` or ``package.module:NAME`` (a user's
object, or a zero-argument class or factory that makes it).  The protocol is in
:mod:`ddpm_check.verify`.

Every call into a target goes through :meth:`Target.call`: an exception the target raises becomes
a :class:`TargetError` whose one line names the method, the exception and the target's own last
frame (file:line), never a traceback of ours; a call that runs past the time limit is stopped;
an output that is not a tensor of the expected shape, or is not finite, is named as such.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import signal
import sys
import threading
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ddpm_check.errors import DDPMCheckError, first_line

#: the capabilities of the protocol, in the order the engine checks them
CAPABILITIES = ("schedule", "q_sample", "step", "sample", "loss", "ddim_step")
#: seconds one call into a target may take before it is stopped
CALL_TIME_LIMIT_S = 60.0
BUILTIN = ("ddpm_check", "source")


class TargetError(DDPMCheckError):
    """A target's method failed (raised, hung, or returned something unusable); one line."""


@dataclass
class Target:
    """A target and what it provides: ``obj``, its ``label``, the capabilities found, the
    timestep base (0: index i is paper step t = i + 1, ours; 1: it takes paper steps), and the
    reverse variance it declares (``"beta_tilde"``, Ho et al.'s default here, or ``"beta"``)."""

    label: str
    obj: Any
    methods: dict[str, Callable] = field(default_factory=dict)
    betas: np.ndarray | None = None
    alphas_cumprod: np.ndarray | None = None
    dtypes: dict[str, str] = field(default_factory=dict)
    schedule_claim: dict | None = None
    timestep_base: int = 0
    variance: str = "beta_tilde"
    prediction: str = "eps"  # what the model output that step/sample/loss take is: eps, x0 or v
    q_sample_draws_noise: bool = False  # q_sample(x_0, t) -> (x_t, noise): it draws its own
    notes: list[str] = field(default_factory=list)

    @property
    def T(self) -> int | None:
        a = self.betas if self.betas is not None else self.alphas_cumprod
        return None if a is None else int(a.shape[0])

    def provides(self, capability: str) -> bool:
        if capability == "schedule":
            return self.betas is not None or self.alphas_cumprod is not None
        return capability in self.methods

    def call(self, method: str, *args: Any, time_limit: float | None = None) -> Any:
        """``method(*args)`` of the target, guarded (see the module docstring); the time limit is
        CALL_TIME_LIMIT_S unless given."""
        fn = self.methods[method]
        time_limit = CALL_TIME_LIMIT_S if time_limit is None else time_limit
        try:
            with _time_limit(time_limit, f"{self.label}.{method}"):
                return fn(*args)
        except TargetError:
            raise
        except Exception as exc:  # the target's own failure, reported as the target's
            raise TargetError(f"{self.label}.{method} raised {first_line(exc, typed=True)}"
                              f"{_target_frame(exc)}") from None


def _target_frame(exc: BaseException) -> str:
    """' (at file:line in func)' of the last frame outside ddpm_check and torch, if any."""
    here = str(Path(__file__).resolve().parents[1])
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith(here) and f"{os.sep}torch{os.sep}" not in f.filename]
    if not frames:
        return ""
    f = frames[-1]
    return f" (at {f.filename}:{f.lineno} in {f.name})"


@contextmanager
def _time_limit(seconds: float, what: str):
    """Stop a call after ``seconds`` (SIGALRM; only in the main thread of a POSIX process: elsewhere
    there is no limit)."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise TargetError(f"{what} did not return within {seconds:g} s (stopped)")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _as_array(value: Any, name: str, label: str) -> tuple[np.ndarray, str]:
    """A target's array as float64 numpy, and the dtype it was stored in."""
    try:
        import torch

        if isinstance(value, torch.Tensor):
            dtype = str(value.dtype).replace("torch.", "")
            return value.detach().to("cpu", torch.float64).numpy().reshape(-1), dtype
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    a = np.asarray(value)
    if a.dtype.kind not in "fiu":
        raise TargetError(f"{label}.{name} must be an array of numbers, got {type(value).__name__} of dtype {a.dtype}")
    return a.astype(np.float64).reshape(-1), str(a.dtype)


def from_object(obj: Any, label: str) -> Target:
    """The protocol's capabilities found on ``obj`` (see :mod:`ddpm_check.verify`)."""
    tgt = Target(label, obj)
    for name in ("q_sample", "step", "sample", "loss", "ddim_step", "ddim_sample"):
        fn = getattr(obj, name, None)
        if callable(fn):
            tgt.methods[name] = fn
    for name in ("betas", "alphas_cumprod"):
        v = getattr(obj, name, None)
        if v is not None:
            arr, dtype = _as_array(v, name, label)
            setattr(tgt, name, arr)
            tgt.dtypes[name] = dtype
    if tgt.betas is not None and tgt.alphas_cumprod is not None and tgt.betas.size != tgt.alphas_cumprod.size:
        raise TargetError(f"{label}: betas has {tgt.betas.size} values but alphas_cumprod {tgt.alphas_cumprod.size}")
    claim = getattr(obj, "schedule_claim", None)
    if claim is not None:
        if not isinstance(claim, dict) or claim.get("kind") not in ("linear", "cosine"):
            raise TargetError(f"{label}.schedule_claim must be a dict with kind 'linear' or 'cosine', got {claim!r}")
        tgt.schedule_claim = dict(claim)
    base = getattr(obj, "timestep_base", 0)
    if base not in (0, 1):
        raise TargetError(f"{label}.timestep_base must be 0 (0-based indices) or 1 (paper steps), got {base!r}")
    tgt.timestep_base = int(base)
    var = getattr(obj, "variance", "beta_tilde")
    if var not in ("beta_tilde", "beta"):
        raise TargetError(f"{label}.variance must be 'beta_tilde' or 'beta' (Ho et al.'s two choices), got {var!r}")
    tgt.variance = var
    pred = getattr(obj, "prediction", "eps")
    if pred not in ("eps", "x0", "v"):
        raise TargetError(f"{label}.prediction must be 'eps', 'x0' or 'v' (what its model outputs), got {pred!r}")
    tgt.prediction = pred
    if not any(tgt.provides(c) for c in CAPABILITIES):
        raise TargetError(f"{label} provides nothing of the protocol (betas or alphas_cumprod, q_sample, step, "
                          f"sample, loss); see `ddpm-check verify --help`")
    return tgt


def _load_object(spec: str) -> tuple[Any, str]:
    """The object a ``file.py:NAME`` or ``module:NAME`` spec names (a class or zero-argument
    factory is called)."""
    where, _, name = spec.rpartition(":")
    if not where or not name:
        raise DDPMCheckError(f"unknown target {spec!r}; give ddpm_check, source, path/to/file.py:NAME "
                             f"or package.module:NAME")
    if where.endswith(".py") or os.sep in where:
        path = Path(where)
        if not path.is_file():
            raise DDPMCheckError(f"target file {where!r} does not exist")
        modname = f"_ddpm_check_target_{abs(hash(str(path.resolve())))}"
        try:
            mod_spec = importlib.util.spec_from_file_location(modname, path)
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules[modname] = module
            mod_spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(modname, None)
            raise TargetError(f"importing {where} raised {first_line(exc, typed=True)}{_target_frame(exc)}") from None
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise DDPMCheckError(f"cannot import module {where!r} ({first_line(exc)})") from None
        except Exception as exc:
            raise TargetError(f"importing {where} raised {first_line(exc, typed=True)}{_target_frame(exc)}") from None
    if not hasattr(module, name):
        public = sorted(n for n in vars(module) if not n.startswith("_"))[:12]
        raise DDPMCheckError(f"{where} has no name {name!r}" + (f"; it has {', '.join(public)}" if public else ""))
    obj = getattr(module, name)
    if isinstance(obj, type) or (callable(obj) and not any(hasattr(obj, m) for m in
                                                           ("betas", "alphas_cumprod", "q_sample", "step", "sample"))):
        try:
            obj = obj()
        except Exception as exc:
            raise TargetError(f"{spec}: calling {name}() raised {first_line(exc, typed=True)}{_target_frame(exc)}") from None
    return obj, spec


def load(spec: str, schedule=None) -> Target:
    """The target a spec names; ``schedule`` (a ScheduleConfig) sets the built-in targets'."""
    if not isinstance(spec, str) or not spec.strip():
        raise DDPMCheckError(f"a target is needed, got {spec!r}")
    spec = spec.strip()
    if spec in BUILTIN:
        from ddpm_check.verify import builtin

        return from_object(builtin.make(spec, schedule), spec) if spec != "source" else builtin.source_target(schedule)
    if spec.startswith("diffusers:"):
        from ddpm_check.verify import builtin

        return builtin.diffusers_target(spec.split(":", 1)[1], schedule)
    if schedule is not None:
        raise DDPMCheckError("--schedule, -T, --beta-start and --beta-end apply to the built-in targets "
                             "(ddpm_check, source, diffusers:...); a user's target has its own arrays")
    obj, label = _load_object(spec)
    return from_object(obj, label)
