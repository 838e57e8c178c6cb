"""The marginal check probes where bugs show (docs/TESTING.md: t with alpha_bar_t ~ 0.5, large x_0)."""


def test_marginal_probes_where_bugs_show(checked):
    res = checked("marginal")
    wheres = {r.where for r in res.rows}
    for t in (1, 143, 300):  # alpha_bar_143 ~ 0.5 for the source's schedule; t = T
        for x0 in ("0", "1", "-3", "10"):
            assert f"t={t} x0={x0}" in wheres
    assert {r.source for r in res.rows} >= {"iterate eq. 2", "q_sample"}
