"""The commands of ``ddpm-check``, one module each; ``cli.py`` registers them in this order.

A command module defines ``command(...)``: a function whose typed parameters are the command's
arguments and options (``typing.Annotated`` with ``typer.Option``), whose docstring is the help
below the summary, and which renders its result for a person or returns its ``--json`` document
(``cli.py`` prints it).  It parses and renders only: what it computes comes from the library.
Module-level imports stay light (typer, rich's basics, ``ddpm_check.defaults``, the registries):
``ddpm-check --help`` imports every command module and must not import torch, sympy or numpy.

Adding a command is one module plus one entry here (CONTRIBUTING.md).
"""

from ddpm_check.registry import Entry, Registry

COMMANDS: Registry[Entry] = Registry("command", (
    Entry("derive", "Derive a DDPM formula step by step; sympy checks every step (✓).",
          "ddpm_check.commands.derive"),
    Entry("train", "Train a SimpleUnet DDPM (Ho et al. Algorithm 1), then sample, draw and score it.",
          "ddpm_check.commands.train"),
    Entry("sample", "Sample a trained model (Ho et al. Algorithm 2): a grid and the reverse-process strip.",
          "ddpm_check.commands.sample"),
    Entry("evaluate", "Score generated digits against held-out digits, beside real digits, Gaussian baselines and noise.",
          "ddpm_check.commands.evaluate"),
    Entry("check", "Verify the derived formulas by Monte Carlo against the torch DDPM; exit 1 if a check fails.",
          "ddpm_check.commands.check"),
    Entry("verify", "Verify any DDPM implementation (ours, the source's, your file) against the derivations; exit 1 if it fails.",
          "ddpm_check.commands.verify"),
    Entry("schedule", "Diagnose beta schedules: how much of x_0 is left in x_T, and what the prior term costs.",
          "ddpm_check.commands.schedule"),
    Entry("audit", "Audit the source derivation: each claim with a verdict (holds / erratum / caveat).",
          "ddpm_check.commands.audit"),
))
