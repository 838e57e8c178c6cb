"""ddpm_check: the numerical half of ddpm-check (numpy, scipy, torch).

Submodules are imported on demand; importing this package does not import torch.
"""

from ddpm_check.errors import DDPMCheckError

__all__ = ["DDPMCheckError"]
