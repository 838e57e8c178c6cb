"""`ddpm-check schedule`: printed numbers, comparisons, JSON, the plot file, and bad input."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from cli import app

runner = CliRunner()
WIDE = {"COLUMNS": "200"}


def explicit_alpha_bar(T: int, b0: float = 1e-4, b1: float = 0.02) -> float:
    p = 1.0
    for s in range(T):
        p *= 1.0 - (b0 + (b1 - b0) * s / (T - 1))
    return p


def kl_nats(ab: float, x0_sq: float) -> float:
    return 0.5 * (ab * x0_sq + (1 - ab) - 1 - math.log(1 - ab))


def test_default_is_the_source_schedule(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["schedule"], env=WIDE)
    assert r.exit_code == 0, r.output
    out = r.stdout
    ab = explicit_alpha_bar(300)
    assert "linear T=300" in out
    assert f"{ab:.4g}" in out and f"{math.sqrt(ab):.4g}" in out  # 0.04806, 0.2192
    assert f"{kl_nats(ab, 1.0):.3g}" in out and f"{kl_nats(ab, 1 / 3):.3g}" in out
    assert f"{kl_nats(ab, 1.0) / math.log(2):.3g}" in out
    assert "|x_0|=1" in out and "x_0~U" in out and "worst case" in out and "uniform on [-1, 1]" in out
    assert "144 (0.48)" in out  # alpha_bar_t first <= 1/2 at t = 144
    assert "0.02 (t=300)" in out
    # the picture goes under runs/, as train's do, not into the current folder unasked
    assert (tmp_path / "runs" / "schedule.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "schedule.png").exists()
    assert "written to runs/schedule.png" in out


def test_single_schedule_options(tmp_path):
    r = runner.invoke(app, ["schedule", "--T", "1000", "--beta-end", "0.02", "--no-plot", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["plot"] is None and len(d["schedules"]) == 1
    s = d["schedules"][0]
    assert s["T"] == 1000 and s["alpha_bar_T"] == pytest.approx(explicit_alpha_bar(1000), rel=1e-12)
    assert s["L_T_uniform_bits"] == pytest.approx(kl_nats(s["alpha_bar_T"], 1 / 3) / math.log(2), rel=1e-9)
    assert not list(tmp_path.iterdir())


def test_compare_with_repeated_and_comma_specs(tmp_path):
    out_dir = tmp_path / "o"
    r = runner.invoke(app, ["schedule", "--spec", "linear:300:1e-4:0.02", "--spec", "linear:1000,cosine:1000",
                            "--out", str(out_dir)], env=WIDE)
    assert r.exit_code == 0, r.output
    for label in ("linear T=300", "linear T=1000", "cosine T=1000"):
        assert label in r.stdout
    assert f"{explicit_alpha_bar(1000):.4g}" in r.stdout  # 4.036e-05
    assert "0.999 (t=1000)" in r.stdout  # the cosine clip
    assert (out_dir / "schedule.png").exists()
    assert str(out_dir / "schedule.png") in r.stdout.replace("\n", "")


def test_compare_json_and_plot_path(tmp_path):
    plot = tmp_path / "cmp.svg"
    r = runner.invoke(app, ["schedule", "--spec", "linear:300,linear:50:1e-3:0.05", "--plot", str(plot), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["plot"] == str(plot) and plot.read_text().lstrip().startswith("<?xml")
    s300, s50 = d["schedules"]
    assert s300["spec"] == "linear:300:0.0001:0.02"
    assert s50["alpha_bar_T"] == pytest.approx(explicit_alpha_bar(50, 1e-3, 0.05), rel=1e-12)
    assert s50["snr_T"] == pytest.approx(s50["alpha_bar_T"] / (1 - s50["alpha_bar_T"]), rel=1e-12)
    assert s300["L_T_worst_nats"] == pytest.approx(kl_nats(explicit_alpha_bar(300), 1.0), rel=1e-9)


@pytest.mark.parametrize("args, words", [
    (["--T", "0"], ["T must be", "0"]),
    (["--beta-start", "2"], ["beta_start", "2.0"]),
    (["--beta-start", "0.1", "--beta-end", "0.01"], ["beta_start must be <= beta_end"]),
    (["--kind", "sigmoid"], ["'sigmoid'", "linear, cosine"]),
    (["--kind", "cosine", "--beta-end", "0.1"], ["--beta-start/--beta-end apply to the linear schedule only, not 'cosine'"]),
    (["--spec", "linear:x"], ["'x'", "KIND:T"]),
    (["--spec", "cosine:0"], ["cosine:0", "T must be"]),
    (["--spec", "linear:300", "--T", "10"], ["--T", "--spec"]),
    (["--plot", "a.txt"], ["'a.txt'", ".png"]),
    (["--plot", "a.png", "--no-plot"], ["--no-plot"]),
])
def test_bad_input_exits_2_with_a_named_value(tmp_path, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["schedule", *args], env=WIDE)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and "error:" in r.stderr
    for w in words:
        assert w in r.stderr
    assert not (tmp_path / "schedule.png").exists()


def test_help_documents_specs():
    r = runner.invoke(app, ["schedule", "--help"], env=WIDE)
    assert r.exit_code == 0
    assert "--spec" in r.stdout and "KIND:T[:BETA_START:BETA_END]" in r.stdout and "cosine:1000" in r.stdout


def test_schedule_zero_snr_beside_each_schedule(tmp_path, clean_error):
    import json

    from typer.testing import CliRunner

    from cli import app

    r = CliRunner().invoke(app, ["schedule", "--spec", "linear:300,cosine:100", "--zero-snr", "--json",
                                 "--plot", str(tmp_path / "z.png")])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    labels = [d["label"] for d in doc["schedules"]]
    assert len(labels) == 4 and labels[1] == labels[0] + " zero-SNR" and labels[3] == labels[2] + " zero-SNR"
    for orig, z in (doc["schedules"][0:2], doc["schedules"][2:4]):
        assert orig["alpha_bar_T"] > 0 and z["alpha_bar_T"] == 0 and z["sqrt_alpha_bar_T"] == 0
        assert z["L_T_worst_bits"] == 0 and z["log_snr_T"] == "-inf" and z["beta_max"] == 1.0
        assert z["beta_first"] == orig["beta_first"]
    assert (tmp_path / "z.png").stat().st_size > 0
    r = CliRunner().invoke(app, ["schedule", "--zero-snr", "--no-plot"], env={"COLUMNS": "120"})
    assert r.exit_code == 0 and "zero-SNR" in r.output and "v-prediction" in r.output
    clean_error(CliRunner().invoke(app, ["schedule", "--zero-snr", "-T", "1", "--no-plot"]), "T >= 2", "T = 1")
