"""The speed options keep the math: CUDA-graph sampling's static step, torch.compile's fallback,
channels_last Adam state across a checkpoint.  All on CPU; the GPU timings are in
benchmarks/gpu_bench.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ddpm_check.data import DataConfig
from ddpm_check.diffusion import GaussianDiffusion
from ddpm_check.schedules import ScheduleConfig, make_schedule
from ddpm_check.train import Trainer, TrainConfig
from ddpm_check.unet import SimpleUnet, UNetConfig

TINY = UNetConfig(image_channels=1, down_channels=(8, 16), time_emb_dim=8)
SCHED = ScheduleConfig(kind="linear", T=30)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return SimpleUnet(TINY).eval()


def test_graph_step_loop_equals_the_eager_loop(net):
    # The loop p_sample_loop(graph=True) replays on CUDA, run step by step here: the same draws
    # (none at index 0) and the same arithmetic as the eager loop, so the same numbers.
    d = GaussianDiffusion(make_schedule(T=30))
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    x0, cap = d.p_sample_loop(net, (6, 1, 8, 8), generator=g1, capture=[29, 10, 0])
    x_T = torch.randn((6, 1, 8, 8), generator=g2)
    calls = []
    y0, cap2 = d._p_sample_loop_graphed(net, x_T, g2, lambda k, T: calls.append(k), {29, 10, 0},
                                        capture_graph=False)
    assert torch.equal(x0, y0)
    assert cap.keys() == cap2.keys() and all(torch.equal(cap[k], cap2[k]) for k in cap)
    assert torch.equal(g1.get_state(), g2.get_state())  # no extra draw at the last step
    assert calls == list(range(1, 31))
    assert not torch.equal(x0, x_T)  # the loop did something


def test_graph_option_off_cuda_is_the_eager_loop(net):
    d = GaussianDiffusion(make_schedule(T=12))
    a = d.p_sample_loop(net, (3, 1, 8, 8), generator=torch.Generator().manual_seed(1))
    b = d.p_sample_loop(net, (3, 1, 8, 8), generator=torch.Generator().manual_seed(1), graph=True)
    assert torch.equal(a, b)


def test_graph_step_uses_the_step_index_from_the_device_tensor(net):
    # one static step at index i equals p_sample's step with the same noise, for several i
    d = GaussianDiffusion(make_schedule(T=30))
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    z = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    for i in (29, 15, 1, 0):
        buf = x.clone()
        d._graph_step(net, buf, z, torch.tensor([i]))
        with torch.no_grad():
            ref = d.p_sample(net, x, i, noise=z)
        torch.testing.assert_close(buf, ref, rtol=1e-6, atol=1e-6)


def _trainer(**kw) -> Trainer:
    return Trainer(TINY, SCHED, DataConfig(), TrainConfig(steps=3, batch_size=8), device="cpu",
                   distributed=False, **kw)


def test_compile_failure_falls_back_to_the_same_eager_steps(monkeypatch):
    eager = _trainer()
    eager.run()

    def broken_compile(module, *a, **k):
        def call(*args, **kwargs):
            # like a missing compiler: fails at the first call, after BatchNorm could have run
            module(*args, **kwargs)
            raise RuntimeError("no C++ compiler found\nsecond line")
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.warns(UserWarning, match="torch.compile failed"):
        tr = _trainer(compile=True)
        tr.run()
    assert tr.compile_error == "RuntimeError: no C++ compiler found" and not tr.compiled
    a, b = eager.state_tensors(), tr.state_tensors()
    for k in a:  # BatchNorm statistics of the failed attempt were rolled back: bit for bit
        assert torch.equal(a[k], b[k]), k


def test_compile_refused_at_wrapping(monkeypatch):
    def refuse(*a, **k):
        raise RuntimeError("Dynamo is not supported on this Python")

    monkeypatch.setattr(torch, "compile", refuse)
    with pytest.warns(UserWarning, match="unavailable"):
        tr = _trainer(compile=True)
    tr.run()
    assert tr.step == 3 and "Dynamo" in tr.compile_error


def test_cli_compile_flag_reports_the_fallback(monkeypatch, tmp_path):
    from cli import app

    import warnings

    monkeypatch.setattr(torch, "compile", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no inductor")))
    args = ["train", "--small", "--steps", "2", "-T", "10", "--eval-n", "0", "--n-samples", "1",
            "--checkpoint-every", "0", "--compile"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "a")])
        assert r.exit_code == 0, r.output
        # said once, in the command's own words; the library's Python warning is not shown too
        assert r.output.count("torch.compile unavailable (RuntimeError: no inductor); trained in eager mode") == 1
        assert "UserWarning" not in r.output and not [w for w in caught if "no inductor" in str(w.message)]
        r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "b"), "--json"])
    assert r.exit_code == 0
    s = json.loads(r.stdout)
    assert s["compiled"] is False and s["compile_error"] == "RuntimeError: no inductor"


def test_sample_and_evaluate_compile_flag(tiny_run, tmp_path, monkeypatch):
    # --compile reaches the sampler: with dynamo's tracing (no code generation) the samples are
    # those of the eager run; without a working compiler, one line and the same samples.
    from cli import app

    def run(*extra, out="x"):
        r = CliRunner().invoke(app, ["sample", "--checkpoint", str(tiny_run), "-n", "3", "--npy", "--seed", "5",
                                     "--out", str(tmp_path / out), *extra])
        assert r.exit_code == 0, r.output
        return r

    eager = json.loads(run("--json", out="e").stdout)
    ref = np.load(eager["npy"])
    assert eager["compiled"] is False and eager["compile_error"] is None
    compiles = _count_compiles(monkeypatch)
    s = json.loads(run("--compile", "--json", out="c").stdout)
    assert compiles() == 1 and s["compiled"] is True and s["compile_error"] is None
    np.testing.assert_array_equal(np.load(s["npy"]), ref)

    monkeypatch.setattr(torch, "compile", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no inductor")))
    r = run("--compile", out="f")
    assert r.output.count("torch.compile unavailable (RuntimeError: no inductor); sampled in eager mode") == 1
    assert "UserWarning" not in r.output
    np.testing.assert_array_equal(np.load(tmp_path / "f" / "samples.npy"), ref)
    r = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(tiny_run), "-n", "4", "--compile", "--json"])
    assert r.exit_code == 0, r.output
    e = json.loads(r.stdout)
    assert e["compiled"] is False and e["compile_error"] == "RuntimeError: no inductor" and e["n"] == 4


def test_adam_state_keeps_the_parameter_layout_after_resume(tmp_path):
    # checkpoints hold contiguous tensors; fused Adam on channels_last weights needs its moments
    # in the same layout (a mismatch silently scrambled the update before this was handled)
    tr = _trainer()
    tr.run(checkpoint_path=tmp_path / "checkpoint.safetensors")
    back = Trainer.from_checkpoint(tmp_path, device="cpu", distributed=False)
    four_d = [p for p in back.model.parameters() if p.ndim == 4]
    assert four_d and all(p.is_contiguous(memory_format=torch.channels_last) for p in four_d)
    for p in four_d:
        st = back.optimizer.state[p]
        assert st["exp_avg"].stride() == p.stride() and st["exp_avg_sq"].stride() == p.stride()


@pytest.mark.slow
def test_real_compile_on_cpu_matches_eager():
    eager = _trainer()
    eager.run()
    tr = _trainer(compile=True)
    tr.run()
    if tr.compile_error:
        pytest.skip(f"torch.compile unavailable here: {tr.compile_error}")
    assert tr.compiled
    for k, v in eager.state_tensors().items():
        if v.dtype.is_floating_point:
            torch.testing.assert_close(tr.state_tensors()[k], v, rtol=1e-3, atol=1e-4)


def _sampler():
    from ddpm_check.sample import sampler_from_modules
    from ddpm_check.schedules import Schedule

    torch.manual_seed(0)
    return sampler_from_modules(SimpleUnet(TINY), Schedule.from_config(SCHED), DataConfig(), torch.device("cpu"))


def test_sampling_compile_falls_back_to_eager(monkeypatch):
    from ddpm_check.sample import sample

    s = _sampler()
    ref = sample(s, 3, seed=2)

    def broken(module, *a, **k):
        return lambda *args, **kw: (_ for _ in ()).throw(RuntimeError("inductor missing"))

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.warns(UserWarning, match="inductor missing"):
        got = sample(s, 3, seed=2, compile=True)
    assert torch.equal(got, ref)


@pytest.mark.slow
def test_real_compiled_sampling_on_cpu_matches_eager():
    from ddpm_check.sample import sample

    s = _sampler()
    torch.testing.assert_close(sample(s, 3, seed=2, compile=True), sample(s, 3, seed=2), rtol=1e-3, atol=1e-3)


def _count_compiles(monkeypatch):
    """torch.compile with dynamo's tracing but no code generation (fast): returns a function that
    says how many graphs dynamo has compiled since."""
    from torch._dynamo.utils import counters

    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real(model, backend="eager"))
    torch._dynamo.reset()
    counters.clear()
    return lambda: counters["frames"]["ok"]


def test_compiled_sampling_compiles_once(monkeypatch):
    # eps_model's probe call must use the loops' input layout (t: one index expanded to [N],
    # stride 0); a contiguous probe t made every sampling run compile the network twice.
    from ddpm_check.sample import sample

    compiles = _count_compiles(monkeypatch)
    s = _sampler()
    eps = s.eps_model(compile=True, probe_shape=(3, *s.shape))
    assert compiles() == 1
    with torch.no_grad():
        s.diffusion.p_sample_loop(eps, (3, *s.shape), generator=torch.Generator().manual_seed(0))
        x_T = torch.randn(3, *s.shape)
        s.diffusion._p_sample_loop_graphed(eps, x_T, torch.Generator().manual_seed(0), None, None,
                                           capture_graph=False)  # the CUDA-graph loop's step
    assert compiles() == 1
    torch._dynamo.reset()
    sample(s, 5, seed=1, batch_size=5, compile=True)
    assert compiles() == 2  # one more for the new sampler's probe, none inside the loop


def test_compiled_training_compiles_once(monkeypatch):
    compiles = _count_compiles(monkeypatch)
    tr = _trainer(compile=True)
    tr.run(until=2)
    tr.run(until=3)
    assert tr.compiled and compiles() == 1


def test_a_torch_compile_that_hands_the_model_back_is_not_called_compiled(monkeypatch):
    # TORCHDYNAMO_DISABLE=1 makes torch.compile return its argument: nothing is compiled, and
    # neither `sample --compile` nor check paths' compiled row may say otherwise
    from ddpm_check.sample import compiled_eps_model

    monkeypatch.setattr(torch, "compile", lambda model, *a, **k: model)
    with pytest.raises(RuntimeError, match="torch.compile is disabled"):
        compiled_eps_model(lambda x, t: x, torch.device("cpu"), (2, 1, 8, 8))
