"""Wrong variants built by sympy substitution change the formula they name, and only it."""

import sympy as sp

import derivations
from ddpm_check import montecarlo as mc
from derivations.symbols import alpha_bar_t, alpha_t


def test_variants_built_by_sympy_substitution_change_the_formula():
    res = dict(derivations.get("posterior").results)
    new = mc.get_variant("posterior", "alpha_for_sqrt_alpha").results("posterior", res)
    # alpha_t where sqrt(alpha_t) belongs: the wrong coef2 (of x_t) is the right one times sqrt(alpha_t)
    assert sp.simplify(new["posterior_mean_coef2"] / res["posterior_mean_coef2"] - sp.sqrt(alpha_t)) == 0
    assert new["posterior_variance"] == res["posterior_variance"]
    assert new["posterior_mean_coef1"] == res["posterior_mean_coef1"]
    m = dict(derivations.get("marginal").results)
    wrong = mc.get_variant("marginal", "one_minus_alpha_for_one_minus_alpha_bar").results("marginal", m)
    assert sp.simplify(wrong["x_t_variance"] - (1 - alpha_t)) == 0
    assert alpha_bar_t in m["x_t_variance"].free_symbols


def test_an_edit_leaves_other_derivations_alone():
    edit = mc.get_variant("posterior", "alpha_for_sqrt_alpha").results
    m = dict(derivations.get("marginal").results)
    assert edit("marginal", m) is m
