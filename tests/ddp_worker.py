"""A worker for tests/test_distributed.py, launched as

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py OUT_DIR STEPS

Every rank (gloo, CPU, float64) does two things and writes what it saw under OUT_DIR:

1. ``bn_rank<r>.json``: GlobalBatchNorm2d on its shard of a fixed batch against torch's own
   nn.BatchNorm2d on the whole batch (computed on every rank, no communication): outputs, input
   gradients, weight and bias gradients (summed over ranks), running statistics, after two
   training steps, for momentum 0.1 and None (cumulative average).
2. ``rank<r>/checkpoint.safetensors``: a float64 Trainer run of STEPS steps under
   DistributedDataParallel (the same configuration the test trains in one process).

Not a test module itself (its name does not start with ``test_``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddpm_check.data import DataConfig  # noqa: E402
from ddpm_check.distributed import GlobalBatchNorm2d, init_from_env  # noqa: E402
from ddpm_check.schedules import ScheduleConfig  # noqa: E402
from ddpm_check.train import Trainer, TrainConfig  # noqa: E402
from ddpm_check.unet import UNetConfig  # noqa: E402

# Shared with tests/test_distributed.py, which trains the same run in one process.
TINY = UNetConfig(image_channels=1, down_channels=(8, 16), time_emb_dim=8)
SCHED = ScheduleConfig(kind="linear", T=50)


def train_config(steps: int) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=8, lr=1e-3, ema_decay=0.9, seed=3)


def bn_check(rank: int, world: int) -> dict[str, float]:
    """Max |difference| of every quantity against nn.BatchNorm2d on the full batch."""
    g = torch.Generator().manual_seed(11)
    n, c = 4 * world, 3
    x_full = torch.randn(n, c, 5, 6, generator=g, dtype=torch.float64) * 2.0 + 0.5  # [N, C, H, W]
    w_out = torch.randn(n, c, 5, 6, generator=g, dtype=torch.float64)  # loss = sum(y * w_out)
    gamma = torch.rand(c, generator=g, dtype=torch.float64) + 0.5
    beta = torch.randn(c, generator=g, dtype=torch.float64)
    per = n // world
    mine = slice(rank * per, (rank + 1) * per)
    errs: dict[str, float] = {}
    for momentum in (0.1, None):
        ref = torch.nn.BatchNorm2d(c, momentum=momentum).double()
        glob = GlobalBatchNorm2d(c, momentum=momentum).double()
        for m in (ref, glob):
            with torch.no_grad():
                m.weight.copy_(gamma)
                m.bias.copy_(beta)
        tag = f"m{momentum}"
        for it in range(2):  # two steps: the running statistics are updated twice
            xr = (x_full + it).clone().requires_grad_(True)
            yr = ref(xr)
            (yr * w_out).sum().backward()
            xg = (x_full[mine] + it).clone().requires_grad_(True)
            yg = glob(xg)
            (yg * w_out[mine]).sum().backward()
            errs[f"{tag}/y{it}"] = float((yg - yr[mine]).detach().abs().max())
            errs[f"{tag}/x_grad{it}"] = float((xg.grad - xr.grad[mine]).abs().max())
        wg, bg = glob.weight.grad.clone(), glob.bias.grad.clone()
        dist.all_reduce(wg)  # the global loss's gradient is the sum of the ranks' parts
        dist.all_reduce(bg)
        errs[f"{tag}/weight_grad"] = float((wg - ref.weight.grad).abs().max())
        errs[f"{tag}/bias_grad"] = float((bg - ref.bias.grad).abs().max())
        errs[f"{tag}/running_mean"] = float((glob.running_mean - ref.running_mean).abs().max())
        errs[f"{tag}/running_var"] = float((glob.running_var - ref.running_var).abs().max())
        errs[f"{tag}/num_batches_tracked"] = float(glob.num_batches_tracked - ref.num_batches_tracked)
        ref.eval()
        glob.eval()
        with torch.no_grad():
            errs[f"{tag}/eval_y"] = float((glob(x_full) - ref(x_full)).abs().max())
        # the gradients are not trivially zero (else the comparisons above would prove nothing)
        errs[f"{tag}/scale"] = float(min(ref.weight.grad.abs().max(), xr.grad.abs().max()))
    return errs


def main() -> None:
    out, steps = Path(sys.argv[1]), int(sys.argv[2])
    torch.set_num_threads(1)
    info = init_from_env(torch.device("cpu"))
    assert info.enabled, "launch with torchrun (2 processes)"
    errs = bn_check(info.rank, info.world_size)
    (out / f"bn_rank{info.rank}.json").write_text(json.dumps(errs))

    tr = Trainer(TINY, SCHED, DataConfig(), train_config(steps), device="cpu", dtype=torch.float64)
    assert tr.dist.enabled and tr.dist.world_size == info.world_size
    tr.run()
    tr.save(out / f"rank{info.rank}" / "checkpoint.safetensors")  # every rank, for the comparison
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
