"""Renderings of a derivation: text, LaTeX, Markdown, JSON."""

from __future__ import annotations

import json
import re

import pytest
import sympy as sp

import derivations
from derivations import render
from derivations import symbols as S


@pytest.mark.parametrize(
    "name,uni,tex",
    [
        ("alpha_bar_tm1", "ᾱₜ₋₁", r"\bar{\alpha}_{t-1}"),
        ("alpha_t", "αₜ", r"\alpha_{t}"),
        ("beta_tilde_t", "β̃ₜ", r"\tilde{\beta}_{t}"),
        ("x_tm1", "xₜ₋₁", "x_{t-1}"),
        ("x_0", "x₀", "x_{0}"),
        ("eps", "ε", r"\epsilon"),
        ("eps_theta", "ε_θ", r"\epsilon_{\theta}"),
        ("x_hat_0", "x̂₀", r"\hat{x}_{0}"),
        ("x_1T", "x_1:T", "x_{1:T}"),
        ("Q", "Q", "Q"),
    ],
)
def test_symbol_names(name, uni, tex):
    assert render.unicode_name(name) == uni
    assert render.latex_name(name) == tex


def test_display_functions():
    e = S.q(S.x_tm1, S.x_t, S.x_0) / S.N(S.x_t, sp.sqrt(S.alpha_t) * S.x_tm1, S.beta_t)
    text = render.pretty(e)
    assert "q(xₜ₋₁ | xₜ, x₀)" in text and "𝒩" in text and "; " in text
    tex = render.latex(e)
    assert r"q\left(x_{t-1} \mid x_{t}, x_{0}\right)" in tex and r"\mathcal{N}" in tex
    assert render.pretty(S.Expect(S.x_t, S.x_0)) == "𝔼[xₜ | x₀]"
    assert r"\mathbb{E}\left[x_{t} \mid x_{0}\right]" == render.latex(S.Expect(S.x_t, S.x_0))
    assert "‖ε - ε_θ‖²" in render.pretty(S.SqNorm(S.eps - S.eps_theta))
    assert r"D_{\mathrm{KL}}" in render.latex(S.KL(S.q(S.x_t, S.x_0), S.p(S.x_t)))


@pytest.mark.parametrize("name", derivations.NAMES)
def test_text_has_numbered_checked_steps_and_boxed_results(name):
    d = derivations.get(name)
    out = render.to_text(d, width=100)
    for i in range(1, len(d.steps) + 1):
        assert re.search(rf"^\s*{i}\. ✓ ", out, re.M), f"step {i} not shown"
    assert out.count("✓") >= len(d.steps)
    assert "╭" in out and "results" in out  # the results panel
    for key in d.results:
        assert f"{key} =" in out
    for step in d.steps[:3]:
        assert step.why.split()[0] in out


def test_unverified_derivation_shows_no_checkmarks():
    out = render.to_text(derivations.build("mean-eps"), width=100)
    assert "✓ " not in out.split("=ᵈ")[0] and " 1. ?" in out
    assert render.to_json(derivations.build("mean-eps"))["verified"] is False


@pytest.mark.parametrize("name", derivations.NAMES)
def test_latex(name):
    d = derivations.get(name)
    tex = render.to_latex(d)
    assert r"\begin{enumerate}" in tex and r"\end{enumerate}" in tex
    assert tex.count(r"\begin{equation*}") == len(d.steps)
    assert r"\boxed" in tex and r"\checkmark" in tex
    assert tex.count("{") == tex.count("}")
    # $ delimiters are balanced on every line (inline math in the prose)
    for line in tex.splitlines():
        assert line.replace(r"\$", "").count("$") % 2 == 0, line
    assert "μ̃" not in tex.replace(r"\text", "")  # prose symbols become LaTeX math


def test_latex_has_fractions_for_posterior():
    tex = render.to_latex(derivations.get("posterior"))
    assert r"\frac" in tex and r"\bar{\alpha}_{t-1}" in tex and r"\sqrt" in tex


@pytest.mark.parametrize("name", derivations.NAMES)
def test_markdown(name):
    d = derivations.get(name)
    md = render.to_markdown(d)
    assert md.startswith(f"## {name}: ")
    assert "### Results" in md
    assert md.count("$$") == 2 * (len(d.steps) + len(d.results))
    for i in range(1, len(d.steps) + 1):
        assert f"**{i}.** ✓" in md


@pytest.mark.parametrize("name", derivations.NAMES)
def test_json_round_trip(name):
    d = derivations.get(name)
    data = json.loads(json.dumps(render.to_json(d)))
    assert data["name"] == name and data["verified"] is True
    assert [s["number"] for s in data["steps"]] == list(range(1, len(d.steps) + 1))
    for js, step in zip(data["steps"], d.steps):
        assert sp.parse_expr(js["lhs"]["srepr"]) == step.lhs
        assert sp.parse_expr(js["rhs"]["srepr"]) == step.rhs
        assert js["why"] == step.why and js["ref"] == step.ref
    assert set(data["results"]) == set(d.results)
    for key, expr in d.results.items():
        assert sp.parse_expr(data["results"][key]["srepr"]) == expr


def test_render_dispatch_and_bad_format():
    from ddpm_check.errors import DDPMCheckError

    d = derivations.get("marginal")
    assert isinstance(render.render(d, "json"), dict)
    assert render.render(d, "markdown").startswith("## marginal")
    with pytest.raises(DDPMCheckError, match="valid formats: text, latex, markdown, json"):
        render.render(d, "html")


def test_latex_prose_escaping():
    out = render._latex_text("q(x_t|x_{t-1}) with 50% & #1, β̃_t ≈ 0.2")
    assert r"\%" in out and r"\&" in out and r"\#" in out
    assert r"$x_{t} \mid x_{t-1}$" in out and r"\tilde{\beta}_{t}" in out and r"\approx" in out
    assert out.count("$") % 2 == 0


def test_code_identifiers_in_prose_stay_code():
    # a word before an underscore is an identifier, not a letter with a subscript
    tex = render._latex_text("eps_weight_beta_tilde holds; alphas_cumprod_prev[0] = 1; x_t and ᾱ_t are math")
    assert r"\texttt{eps\_weight\_beta\_tilde}" in tex and r"\texttt{alphas\_cumprod\_prev[0]}" in tex
    assert "$x_{t}$" in tex and r"\bar{\alpha}_{t}" in tex
    assert "$s_{" not in tex and "$a_{" not in tex
    md = render._markdown_text("The source's `if t == 0: return model_mean` and x0_weight_snr")
    assert "`if t == 0: return model_mean`" in md and "`x0_weight_snr`" in md
    assert md.count("`") == 4  # no backticks nested inside a code span


@pytest.mark.parametrize("fmt", ["latex", "markdown"])
def test_result_names_are_typeset_as_written(fmt):
    out = render.render(derivations.get("marginal"), fmt)
    assert r"\boxed{\mathtt{x\_t\_mean\_coef} = " in out
    assert r"\texttt{$" not in out  # no math inside a text-font group
