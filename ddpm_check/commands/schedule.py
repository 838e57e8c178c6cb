"""`ddpm-check schedule`: diagnose beta schedules (what x_T keeps of x_0, the prior term L_T)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ddpm_check import defaults
from ddpm_check.commands.ui import console, esc
from ddpm_check.errors import DDPMCheckError


def command(
    T: Annotated[Optional[int], typer.Option("--T", "-T", "--timesteps", help=f"Number of diffusion steps (default {defaults.T}).", show_default=False)] = None,
    kind: Annotated[Optional[str], typer.Option(help="linear or cosine (default linear).", show_default=False)] = None,
    beta_start: Annotated[Optional[float], typer.Option(help=f"First beta of a linear schedule (default {defaults.BETA_START:g}).", show_default=False)] = None,
    beta_end: Annotated[Optional[float], typer.Option(help=f"Last beta of a linear schedule (default {defaults.BETA_END:g}).", show_default=False)] = None,
    spec: Annotated[Optional[list[str]], typer.Option(
        "--spec", help="Schedules to compare, KIND:T[:BETA_START:BETA_END]: linear:300:1e-4:0.02, linear:1000 "
                       "(betas 1e-4..0.02), cosine:1000. Repeat it or separate with commas.",
        show_default=False)] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Where to write the plot (.png, .pdf or .svg; default schedule.png in --out).", show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Option(help="Folder for the default plot file (default: runs/, where train writes too).", show_default=False)] = None,
    no_plot: Annotated[bool, typer.Option("--no-plot", help="Do not write a plot.")] = False,
    zero_snr: Annotated[bool, typer.Option("--zero-snr", help="Also show each schedule rescaled to zero terminal SNR (Lin et al. 2024): abar_T = 0, beta_T = 1.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the numbers as JSON.")] = False,
):
    """For each schedule: alpha_bar_T and sqrt(alpha_bar_T), the terminal SNR, the prior term L_T = KL(q(x_T|x_0) || N(0, 1)) per dimension in nats and bits (for |x_0| = 1, the worst case of data in [-1, 1], and averaged over x_0 ~ U[-1, 1]), the t where alpha_bar_t falls to 1/2 and the largest beta_t. A plot shows alpha_bar_t, log SNR and beta_tilde_t/beta_t against t/T.

    One schedule: --kind, --T, --beta-start, --beta-end (default: the source's linear T=300, beta 1e-4..0.02). --zero-snr adds each schedule rescaled to zero terminal SNR beside it.

    Several, to compare: --spec KIND:T[:BETA_START:BETA_END], repeated or comma-separated, instead of --kind etc. Example: ddpm-check schedule --spec linear:300:1e-4:0.02 --spec linear:1000,cosine:1000
    """
    from ddpm_check import diagnostics as D
    from ddpm_check.schedules import Schedule, ScheduleConfig, zero_snr_betas

    single = {"--kind": kind, "--T": T, "--beta-start": beta_start, "--beta-end": beta_end}
    if spec:
        given = [k for k, v in single.items() if v is not None]
        if given:
            raise DDPMCheckError(f"{', '.join(given)} cannot be combined with --spec; put every schedule in a "
                                 f"--spec ({D.SPEC_HELP})")
        configs = D.parse_specs(spec)
    else:
        configs = [ScheduleConfig.from_options(kind, T, beta_start, beta_end, kind_flag="--kind")]
    if plot is not None and no_plot:
        raise DDPMCheckError("--plot and --no-plot contradict each other; give one")
    plot_path = None if no_plot else D.check_plot_path(plot if plot is not None else (out or Path("runs")) / "schedule.png")
    schedules = [Schedule.from_config(c) for c in configs]
    diags, extra = [], []
    for s in schedules:
        diags.append(D.diagnose(s))
        if zero_snr:  # the rescaled schedule beside its original
            diags.append(D.diagnose_zero_snr(s))
            extra.append((diags[-1].label, zero_snr_betas(s.betas)))
    if plot_path is not None:
        plot_path = D.plot(schedules, plot_path, extra=extra)
    if as_json:
        return {"schedules": [d.to_dict() for d in diags], "plot": None if plot_path is None else str(plot_path),
                "L_T": "KL(q(x_T|x_0) || N(0,1)) per dimension; worst: |x_0| = 1; uniform: x_0 ~ U[-1,1] (E x_0^2 = 1/3)",
                "ho_L_T_bits": D.HO_L_T_BITS}
    render(diags, plot_path)
    return None


def render(diags, plot_path) -> None:
    """The schedules side by side, one row per quantity, and what L_T is."""
    from rich.table import Table

    from ddpm_check import diagnostics as D

    con = console()
    tab = Table(title="beta schedules (per dimension; paper steps t = 1..T)", title_justify="left")
    tab.add_column("quantity", no_wrap=True)
    for d in diags:
        tab.add_column(d.label, justify="right")

    def row(name, fn):
        tab.add_row(name, *[fn(d) for d in diags])

    row("β_1 … β_T", lambda d: f"{d.beta_first:.3g} … {float(d.beta_end if d.beta_end is not None else d.beta_max):.3g}"
        if d.kind == "linear" else f"{d.beta_first:.3g} … {d.beta_max:.3g}")
    row("max β_t (at t)", lambda d: f"{d.beta_max:.4g} (t={d.t_beta_max})")
    row("α_t range", lambda d: f"{d.alpha_min:.4g} … {d.alpha_max:.6g}")
    row("ᾱ_T", lambda d: f"{d.alpha_bar_T:.4g}")
    row("√ᾱ_T (x_0 left in x_T)", lambda d: f"{d.sqrt_alpha_bar_T:.4g}")
    row("SNR(T) = ᾱ_T/(1-ᾱ_T)", lambda d: f"{d.snr_T:.3g}")
    row("log SNR(T)", lambda d: f"{d.log_snr_T:.2f}")
    row("L_T |x_0|=1   nats", lambda d: f"{d.L_T_worst_nats:.3g}")
    row("L_T |x_0|=1   bits", lambda d: f"{d.L_T_worst_bits:.3g}")
    row("L_T x_0~U     nats", lambda d: f"{d.L_T_uniform_nats:.3g}")
    row("L_T x_0~U     bits", lambda d: f"{d.L_T_uniform_bits:.3g}")
    row("L_T x_0~U / 1e-5 bits", lambda d: f"{d.L_T_uniform_bits / D.HO_L_T_BITS:.3g}x")
    row("ᾱ_t ≤ 0.5 from t (t/T)", lambda d: "never" if d.t_half is None else f"{d.t_half} ({d.t_half_frac:.2f})")
    con.print(tab)
    con.print("L_T = KL(q(x_T|x_0) || N(0,1)) = ½(ᾱ_T x_0² + (1 - ᾱ_T) - 1 - ln(1 - ᾱ_T)) per dimension; "
              "|x_0|=1: the worst case of data in [-1, 1]; x_0~U: averaged over x_0 uniform on [-1, 1] "
              "(E x_0² = 1/3). Ho et al. 2020 chose their schedule (linear, T = 1000) for L_T ≈ 1e-5 bits/dim.")
    if any(d.spec.endswith(":zero-snr") for d in diags):
        con.print("zero-SNR: √ᾱ_t shifted and scaled so that √ᾱ_T = 0 and √ᾱ_1 is unchanged (Lin et al. 2024, "
                  "derivation zero-snr): x_T is pure noise, so sampling from N(0, I) starts exactly, but β_T = 1 and "
                  "ε-prediction is undefined at t = T (x_T = ε says nothing of x_0); train with v-prediction.")
    if plot_path is not None:
        con.print(f"plot (alpha_bar_t, log SNR, beta_tilde_t/beta_t vs t/T) written to {esc(plot_path)}")
