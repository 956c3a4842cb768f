"""medtools: small composable command-line tools for privacy-preserving medical imaging."""

import os as _os

# OpenMP threads that spin while waiting starve each other (and every other job) on shared
# or oversubscribed CPUs: measured 8 s instead of 106 s per training epoch here with passive
# waiting. Set before torch loads OpenMP; a user's own OMP_WAIT_POLICY wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
