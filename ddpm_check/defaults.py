"""The toolkit's defaults, in one place (stdlib only: the CLI's help text may quote them without
importing numpy).

The schedule is the source's, which the toolkit starts from: linear betas from 1e-4 to 0.02
over T = 300 steps (Ho et al. 2020 use the same range over T = 1000).  Everything that needs a
default schedule takes ``ScheduleConfig()``, whose field defaults are these.
"""

#: the default beta schedule (the source's)
SCHEDULE_KIND = "linear"
T = 300
BETA_START = 1e-4
BETA_END = 0.02

#: the root seed of the checks and the audit (the arXiv number of Ho et al. 2020, 2006.11239);
#: every check's seed is derived from it and the check's name; ``--seed`` replaces it
ROOT_SEED = 200611239
