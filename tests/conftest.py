import os

from hypothesis import HealthCheck, settings

# Property tests are for exact identities only (TESTING.md section 1).  The CI profile is
# derandomized so a run is reproducible and cannot fail by luck.
settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
