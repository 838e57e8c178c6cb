"""`ddpm-check verify`: the engine on our paths, the source, the shipped examples (one correct,
each broken one with its one mistake caught by the right row and named by the diagnosis), and
bad targets, each one clear line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli import app
from ddpm_check.errors import DDPMCheckError
from ddpm_check.verify import engine, targets

runner = CliRunner()
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FAST = 1024  # values per t in the step's variance rows: enough for every mistake below


def _run(spec: str, samples: int = FAST):
    return engine.verify(targets.load(spec), samples=samples)


def _failing(report):
    return {r.name: [row for row in r.tests if not row.passed] for r in report.results if not r.passed}


@pytest.fixture(scope="module")
def reports():
    return {p.stem: _run(f"{p}:ddpm") for p in sorted(EXAMPLES.glob("*.py"))}


def test_our_paths_and_the_correct_example_pass(reports):
    ours = _run("ddpm_check")
    five = ["schedule", "q_sample", "step", "sample", "loss"]
    for rep, ddim in ((ours, True), (reports["correct_ddpm"], False)):
        assert rep.passed, _failing(rep)
        assert [r.name for r in rep.results] == five + (["ddim_step"] if ddim else []) + ["sample law"]
        assert rep.not_provided == ([] if ddim else ["ddim_step"])
        assert rep.alpha_spent <= 1e-4 * (1 + 1e-9)


# example -> (the section that must fail, words of the worst failing row's quantity or note)
BROKEN = {
    "broken_prev_padding": ("step", "follows alphas_cumprod_prev padded on the wrong side"),
    "broken_std_for_variance": ("step", "follows beta_tilde_t^2: the variance multiplies z where its sqrt belongs"),
    "broken_posterior_no_division": ("step", "follows beta_tilde_t without the division by 1 - alpha_bar_t"),
    "broken_index_shift": ("step", "matches alpha_bar read at t="),
    "broken_last_step_noise": ("step", "matches noise of variance beta_1"),
    "broken_float16_schedule": ("schedule", "alpha_bar rounds to 1 at t = 1"),
    "broken_loss_timestep": ("loss", "model told t="),
    "broken_cosine_schedule": ("schedule", "betas differ most at t=1"),
}


def test_every_example_is_shipped():
    assert {p.stem for p in EXAMPLES.glob("*.py")} == {"correct_ddpm", *BROKEN}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_each_broken_example_fails_at_its_mistake(reports, name):
    section, words = BROKEN[name]
    bad = _failing(reports[name])
    assert section in bad, (name, list(bad))
    text = " ".join(f"{r.quantity} {r.note}" for r in bad[section])
    assert words in text, (name, text[:500])
    worst = max(bad[section], key=lambda r: r.margin)
    assert worst.margin > 3.0


def test_the_source_fails_only_on_mixed_batches_and_is_checked_per_t():
    rep = _run("source")
    bad = _failing(rep)
    assert list(bad) == ["step"]
    assert [r.quantity for r in bad["step"]] == ["one step on a batch mixing every t (per element)"]
    assert "Boolean value of Tensor with more than one value is ambiguous" in bad["step"][0].note
    assert "sample" in rep.not_provided
    kind = next(x for r in rep.results if r.name == "loss" for x in r.rows if x.group == "loss kind")
    assert kind.verdict == "finding" and "L1 (not eq. 14)" in kind.note  # the source's F.l1_loss
    step = next(r for r in rep.results if r.name == "step")
    assert len(step.tests) > 300  # every t's mean and variance still ran, one t per call


def _module(tmp_path, body: str) -> str:
    f = tmp_path / "target.py"
    f.write_text(body)
    return str(f)


def test_bad_targets_get_one_clear_line(tmp_path):
    with pytest.raises(DDPMCheckError, match="target file 'no/such.py' does not exist"):
        targets.load("no/such.py:ddpm")
    path = _module(tmp_path, "x = 1\n")
    with pytest.raises(DDPMCheckError, match=r"has no name 'ddpm'; it has x"):
        targets.load(f"{path}:ddpm")
    with pytest.raises(DDPMCheckError, match="provides nothing of the protocol"):
        targets.load(f"{path}:x")
    path = _module(tmp_path, "raise ValueError('broken import')\n")
    with pytest.raises(DDPMCheckError, match=r"importing .*target.py raised ValueError: broken import \(at .*target.py:1"):
        targets.load(f"{path}:ddpm")
    with pytest.raises(DDPMCheckError, match="unknown target 'nocolon'"):
        targets.load("nocolon")
    with pytest.raises(DDPMCheckError, match="apply to the built-in targets"):
        from ddpm_check.schedules import ScheduleConfig

        targets.load(f"{EXAMPLES / 'correct_ddpm.py'}:ddpm", ScheduleConfig(T=10))


@pytest.mark.parametrize("body, words", [
    ("raise RuntimeError('kaput')", "q_sample raised RuntimeError: kaput (at "),
    ("return x_0[:1]", "returned shape [1, 1, 8, 8], expected"),
    ("return x_0 * float('nan')", "non-finite values"),
    ("return [1, 2]", "returned list, not a tensor"),
    ("import time; time.sleep(5)", "did not return within 0.5 s"),
])
def test_a_failing_method_is_a_failing_row_with_the_targets_message(tmp_path, monkeypatch, body, words):
    path = _module(tmp_path, f"""
import numpy as np
class T:
    betas = np.linspace(1e-4, 0.02, 20)
    def q_sample(self, x_0, t, noise):
        {body}
ddpm = T
""")
    monkeypatch.setattr(targets, "CALL_TIME_LIMIT_S", 0.5)
    rep = engine.verify(targets.load(f"{path}:ddpm"), samples=FAST)
    bad = _failing(rep)
    assert list(bad) == ["q_sample"]
    assert words in bad["q_sample"][0].note
    assert rep.not_provided == ["step", "sample", "loss", "ddim_step"]


def test_steps_without_a_schedule_are_not_checked_nor_passed(tmp_path):
    path = _module(tmp_path, "class T:\n    def step(self, eps, t, x_t, generator):\n        return x_t\nddpm = T\n")
    rep = engine.verify(targets.load(f"{path}:ddpm"), samples=FAST)
    assert rep.results == [] and "step" in rep.skipped
    assert rep.not_provided == ["schedule", "q_sample", "sample", "loss", "ddim_step"]


def test_noise_not_from_the_generator_is_named(tmp_path):
    path = _module(tmp_path, """
import numpy as np, torch
class T:
    betas = np.linspace(1e-4, 0.02, 10)
    def step(self, eps, t, x_t, generator):
        return x_t + torch.from_numpy(np.random.default_rng().normal(size=x_t.shape)).to(x_t.dtype)
ddpm = T
""")
    rep = engine.verify(targets.load(f"{path}:ddpm"), samples=FAST)
    bad = _failing(rep)["step"]
    assert bad[0].quantity == "the step's noise comes from the given generator"


def test_cli_verify_exit_codes_and_strict_json(tmp_path):
    r = runner.invoke(app, ["verify", f"{EXAMPLES / 'broken_last_step_noise.py'}:ddpm", "--samples", str(FAST), "--json"])
    assert r.exit_code == 1
    doc = json.loads(r.stdout, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert doc["passed"] is False and doc["target"].endswith("broken_last_step_noise.py:ddpm")
    assert {s["check"] for s in doc["sections"]} == {"schedule", "q_sample", "step", "sample", "loss", "sample law"}
    assert doc["not_provided"] == ["ddim_step"]
    r = runner.invoke(app, ["verify", "ddpm_check", "-T", "20", "--samples", str(FAST)])
    assert r.exit_code == 0, r.output
    assert "every check of what it provides passed" in r.output and "family-wise false-failure rate <= 0.0001" in r.output
    r = runner.invoke(app, ["verify", "nowhere.py:x"])
    assert r.exit_code == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "nowhere.py" in lines[0]
    r = runner.invoke(app, ["verify", "ddpm_check", "--samples", "3"])
    assert r.exit_code == 2 and "samples" in r.stderr


def test_the_engine_catches_a_mistake_injected_into_our_own_step(monkeypatch):
    # our p_sample with its posterior std 10% too large at one step: caught by that t's variance row
    from ddpm_check.verify.builtin import OurDiffusion

    tgt_obj = OurDiffusion()
    std = tgt_obj.diffusion.posterior_std.clone()
    std[150] *= 1.1
    tgt_obj.diffusion.posterior_std = std
    rep = engine.verify(targets.from_object(tgt_obj, "ours, std x1.1 at t=151"), samples=16_384)
    bad = _failing(rep)
    assert list(bad) == ["step"] and [r.where for r in bad["step"]] == ["t=151"]
    assert not math.isinf(bad["step"][0].margin)


def test_diffusers_ddpm_scheduler_passes_and_its_float32_precision_is_reported():
    pytest.importorskip("diffusers")
    rep = _run("diffusers:DDPMScheduler")
    assert rep.passed, _failing(rep)
    assert rep.not_provided == ["sample", "loss", "ddim_step"]
    sched = next(r for r in rep.results if r.name == "schedule")
    rows = {x.quantity: x for x in sched.rows}
    bt = rows["beta_tilde_t from the stored arrays, relative error"]
    assert bt.role == "diagnostic" and "float32" in bt.note and 1e-6 < bt.estimate < 1e-2
    assert "claimed schedule" in {x.group for x in sched.rows}


def test_diffusers_missing_is_one_line(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_diffusers(name, *a, **k):
        if name == "diffusers":
            raise ImportError("No module named 'diffusers'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_diffusers)
    with pytest.raises(DDPMCheckError, match=r"diffusers is not installed: pip install diffusers"):
        targets.load("diffusers:DDPMScheduler")
    with pytest.raises(DDPMCheckError, match="unknown diffusers target 'UNet2DModel'"):
        targets.load("diffusers:UNet2DModel")


def test_ddim_rows_catch_alpha_bar_prev_read_one_index_below_t():
    from ddpm_check.verify.builtin import OurDiffusion

    class Broken(OurDiffusion):  # abar_prev from alphas_cumprod_prev (index t - 1), not at the next visit
        def ddim_step(self, eps, t, t_prev, x_t, eta, generator):
            return self.diffusion.ddim_step(eps, t, t - 1, x_t, eta, generator)

    obj = Broken()
    obj.ddim_sample = None  # its loop is right: hold only the step here
    rep = engine.verify(targets.from_object(obj, "abar_prev one index below t"), samples=FAST)
    bad = _failing(rep)
    assert list(bad) == ["ddim_step"] and "ddim mean eta=0" in {r.group for r in bad["ddim_step"]}
    assert max(r.margin for r in bad["ddim_step"]) > 3.0


def test_ddim_rows_catch_diffusers_set_alpha_to_one_false():
    diffusers = pytest.importorskip("diffusers")
    from ddpm_check.verify.builtin import _DiffusersDDIM

    sched = diffusers.DDIMScheduler(num_train_timesteps=300, beta_end=0.02, clip_sample=False, set_alpha_to_one=False)
    rep = engine.verify(targets.from_object(_DiffusersDDIM(sched), "DDIM, set_alpha_to_one=False"), samples=FAST)
    bad = _failing(rep)
    assert list(bad) == ["ddim_step"] and "ddim last step" in {r.group for r in bad["ddim_step"]}


def test_ddim_targets_pass():
    for spec in ("ddpm_check", "diffusers:DDIMScheduler"):
        if spec.startswith("diffusers"):
            pytest.importorskip("diffusers")
        rep = _run(spec)
        assert rep.passed, _failing(rep)
        ddim = next(r for r in rep.results if r.name == "ddim_step")
        assert {"ddim last step", "ddim eta=0", "ddim variance eta=1"} <= {r.group for r in ddim.rows}
    ours = next(r for r in _run("ddpm_check").results if r.name == "ddim_step")
    assert "ddim sample" in {r.group for r in ours.rows}  # our loop against our steps


@pytest.mark.parametrize("zero_snr, prediction", [(False, "x0"), (False, "v"), (True, "v")])
def test_x0_and_v_prediction_targets_pass_and_a_flipped_v_fails(zero_snr, prediction):
    from ddpm_check.schedules import ScheduleConfig
    from ddpm_check.verify.builtin import OurDiffusion

    cfg = ScheduleConfig(T=300, zero_snr=zero_snr)
    rep = engine.verify(targets.from_object(OurDiffusion(cfg, prediction=prediction), prediction), samples=FAST)
    assert rep.passed, _failing(rep)
    assert len(rep.results) == 7

    class Flipped(OurDiffusion):  # the step reads -output: for v, x0_hat = sqrt(abar) x_t + sqrt(1 - abar) v
        def step(self, out, t, x_t, generator):
            return super().step(-out, t, x_t, generator)

    obj = Flipped(cfg, prediction=prediction)
    obj.ddim_step = obj.ddim_sample = None
    bad = _failing(engine.verify(targets.from_object(obj, "flipped"), samples=FAST))
    assert "step" in bad and "mean" in {r.group for r in bad["step"]}


def test_a_bad_prediction_attribute_is_one_line(tmp_path):
    path = _module(tmp_path, "import numpy as np\nclass T:\n    betas = np.linspace(1e-4, 0.02, 10)\n"
                             "    prediction = 'epsilon'\nddpm = T\n")
    with pytest.raises(DDPMCheckError, match="prediction must be 'eps', 'x0' or 'v'.*got 'epsilon'"):
        targets.load(f"{path}:ddpm")


def test_the_sample_law_row_is_a_test_where_the_start_is_exact_and_catches_a_noiseless_sampler():
    from ddpm_check.schedules import ScheduleConfig
    from ddpm_check.verify.builtin import OurDiffusion

    def law(obj):
        rep = engine.verify(targets.from_object(obj, "t"), samples=FAST)
        return next(r for r in rep.results if r.name == "sample law")

    # the source's T = 300 leaves sqrt(abar_T) = 0.22 of x_0: reported as a diagnostic, not a failure
    assert {r.role for r in law(OurDiffusion()).rows} == {"diagnostic"}
    good = law(OurDiffusion(ScheduleConfig(T=1000)))
    assert {r.role for r in good.rows} == {"test"} and good.passed

    class NoNoise(OurDiffusion):  # the whole loop without its noise terms: the law collapses
        def sample(self, model, shape, generator):
            x = torch.randn(shape, generator=generator)
            for i in reversed(range(self.diffusion.T)):
                t = torch.full((shape[0],), i, dtype=torch.long)
                x = self.diffusion.p_mean_variance(model, x, t)["mean"]
            return x

    bad = law(NoNoise(ScheduleConfig(T=1000)))
    assert not bad.passed and max(r.margin for r in bad.tests) > 3.0


@pytest.mark.parametrize("T", [1, 2, 3])
def test_tiny_schedules_verify_without_a_traceback(T):
    r = runner.invoke(app, ["verify", "ddpm_check", "-T", str(T), "--samples", "256", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["passed"] is True and doc["alpha_spent"] <= 1e-4
