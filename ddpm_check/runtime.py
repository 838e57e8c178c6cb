"""How torch runs here: thread settings the checks and the audit share (torch imported lazily)."""

from __future__ import annotations


class single_thread:
    """Run torch single-threaded: the checks' tensors are small (thousands of elements), where
    intra-op threads cost more than they give, and much more on a busy machine.  Restored after."""

    def __enter__(self):
        import torch

        self._n = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self._n)
        return False
