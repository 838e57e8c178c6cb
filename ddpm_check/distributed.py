"""Multi-process training support: torchrun environment, rank helpers, synchronized BatchNorm.

``ddpm-check train`` run under ``torchrun --nproc_per_node N`` trains with
DistributedDataParallel: NCCL on GPUs, gloo on CPU.  Each rank sees its shard of the same
global batch, so N processes with a global batch B take the same optimisation steps as one
process with batch B (up to the order of floating-point sums).

SimpleUnet uses BatchNorm, whose batch statistics would otherwise be per-rank (per shard), so
the model's forward pass would differ from a single process on the whole batch.  torch's
``nn.SyncBatchNorm`` fixes that on GPUs but refuses CPU tensors; :class:`GlobalBatchNorm2d`
computes the statistics of the global batch on any device, through an autograd-aware
all-reduce (its backward sums the gradients of all ranks, as the gradient of the global batch's
loss requires).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ddpm_check.errors import DDPMCheckError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: rank among world_size processes (1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when the torchrun/torch.distributed environment variables are set."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def env_world_size() -> int:
    """WORLD_SIZE from the torchrun environment (1 when not launched by torchrun)."""
    return int(os.environ["WORLD_SIZE"]) if launched_by_torchrun() else 1


def env_rank() -> int:
    """RANK from the torchrun environment (0 when not launched by torchrun)."""
    return int(os.environ["RANK"]) if launched_by_torchrun() else 0


def env_local_rank() -> int:
    """LOCAL_RANK (this process's GPU on its node) from the torchrun environment."""
    return int(os.environ.get("LOCAL_RANK", env_rank())) if launched_by_torchrun() else 0


def init_from_env(device: torch.device) -> DistInfo:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on CPU); no-op otherwise."""
    if not launched_by_torchrun():
        return DistInfo()
    rank, world, local = env_rank(), env_world_size(), env_local_rank()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shard(batch: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """This rank's contiguous slice of a global batch (the global batch must split evenly)."""
    if not info.enabled:
        return batch
    n = batch.shape[0]
    if n % info.world_size:
        raise DDPMCheckError(
            f"batch size {n} does not split evenly over {info.world_size} processes; "
            "choose a multiple of the number of processes"
        )
    per = n // info.world_size
    return batch[info.rank * per:(info.rank + 1) * per]


def broadcast_parameters(module: nn.Module, src: int = 0) -> None:
    """Make every rank hold rank ``src``'s parameters and buffers."""
    if dist.is_available() and dist.is_initialized():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src)


class _AllReduceSum(torch.autograd.Function):
    """y = sum over ranks of x (every rank gets y); the backward pass sums the gradients of all
    ranks likewise, because every rank's loss depends on every rank's x through y.  (Written out
    instead of torch.distributed.nn.functional.all_reduce, deprecated in recent torch.)"""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        g = grad.contiguous().clone()
        dist.all_reduce(g)
        return g


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """The autograd-aware sum of ``x`` over all ranks."""
    return _AllReduceSum.apply(x)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch across all ranks.

    Same parameters, buffers and state_dict keys as ``nn.BatchNorm2d``; identical to it when
    not distributed or in eval mode.  Works on CPU (gloo) and GPU.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [N, C, H, W]
        if not (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        count = torch.tensor([x.numel() / c], dtype=x.dtype, device=x.device)
        total = all_reduce_sum(torch.cat([x.sum(dim=(0, 2, 3)), count]))  # [C + 1]
        n = total[c]
        mean = total[:c] / n  # [C]
        centred = x - mean[None, :, None, None]
        var = all_reduce_sum((centred * centred).sum(dim=(0, 2, 3))) / n  # biased, as BN normalises

        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * var.detach() * (n / (n - 1)))
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


def convert_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm2d by a synchronized one: nn.SyncBatchNorm on CUDA (fused
    kernels), GlobalBatchNorm2d elsewhere.  Weights and running statistics are kept."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, GlobalBatchNorm2d):
            ref = next(iter(child.state_dict().values()))  # keep the device and dtype
            new = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats).to(device=ref.device,
                                                                  dtype=ref.dtype)
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            setattr(module, name, new)
        else:
            convert_batchnorm(child, device)
    return module
