"""Training and sampling throughput of the `train --small` set-up, beside a source-faithful loop.

Run by hand (not a test):  python benchmarks/train_speed.py [--threads 2] [--device cpu]

Both sides use the same SimpleUnet (UNetConfig.small, 8x8 digits, T = 300 linear), the same
in-memory batches and Adam; what differs is the loop around the model:

- ddpm-check: ``Trainer.train_step`` (coefficients gathered on the device, L2 loss, EMA update)
  and ``sample`` (batched ``p_sample_loop``: 0-d coefficient views, noise refilled in place,
  per-element "no noise at t = 0");
- source-style, as the blog's code describes it: ``get_index_from_list`` per coefficient and
  step (``vals.gather(-1, t.cpu())``, reshape, ``.to(device)``), ``F.l1_loss``, no EMA, and
  sampling one image at a time with ``if t == 0`` (a batch cannot mix steps).

Prints a markdown table of images/s and the ratios.  Timings are medians of repeats after a
warm-up; the machine's other load changes them, so run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def source_style(diffusion_schedule, device):
    """The blog's precomputed tensors and helpers, written from its description."""
    s = diffusion_schedule
    f32 = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    betas = f32(s.betas)
    consts = dict(
        betas=betas,
        sqrt_recip_alphas=f32(s.sqrt_recip_alphas),
        sqrt_alphas_cumprod=f32(s.sqrt_alphas_cumprod),
        sqrt_one_minus_alphas_cumprod=f32(s.sqrt_one_minus_alphas_cumprod),
        posterior_variance=f32(s.posterior_variance),
    )

    def get_index_from_list(vals, t, x_shape):
        batch_size = t.shape[0]
        out = vals.gather(-1, t.cpu())
        return out.reshape(batch_size, *((1,) * (len(x_shape) - 1))).to(t.device)

    def forward_diffusion_sample(x_0, t):
        noise = torch.randn_like(x_0)
        a = get_index_from_list(consts["sqrt_alphas_cumprod"], t, x_0.shape)
        b = get_index_from_list(consts["sqrt_one_minus_alphas_cumprod"], t, x_0.shape)
        return a.to(device) * x_0.to(device) + b.to(device) * noise.to(device), noise.to(device)

    def get_loss(model, x_0, t):
        x_noisy, noise = forward_diffusion_sample(x_0, t)
        return F.l1_loss(noise, model(x_noisy, t))

    @torch.no_grad()
    def sample_timestep(model, x, t):
        betas_t = get_index_from_list(consts["betas"], t, x.shape)
        s1 = get_index_from_list(consts["sqrt_one_minus_alphas_cumprod"], t, x.shape)
        r = get_index_from_list(consts["sqrt_recip_alphas"], t, x.shape)
        model_mean = r * (x - betas_t * model(x, t) / s1)
        pv = get_index_from_list(consts["posterior_variance"], t, x.shape)
        if t == 0:
            return model_mean
        return model_mean + torch.sqrt(pv) * torch.randn_like(x)

    @torch.no_grad()
    def sample_one(model, shape, T):
        img = torch.randn((1, *shape), device=device)
        for i in range(0, T)[::-1]:
            t = torch.full((1,), i, device=device, dtype=torch.long)
            img = sample_timestep(model, img, t)
        return img

    return get_loss, sample_one


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--train-steps", type=int, default=30, help="timed steps per repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sample-n", type=int, default=64, help="images per batched sampling run")
    ap.add_argument("--source-sample-n", type=int, default=2, help="images sampled one at a time")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from ddpm_check.data import DataConfig
    from ddpm_check.sample import sample, sampler_from_modules
    from ddpm_check.schedules import ScheduleConfig
    from ddpm_check.train import Trainer, TrainConfig, resolve_device
    from ddpm_check.unet import UNetConfig

    device = resolve_device(args.device)
    B = 128
    tr = Trainer(UNetConfig.small(1), ScheduleConfig(T=300), DataConfig(),
                 TrainConfig(steps=10**9, batch_size=B, lr=1e-3, ema_decay=0.99), device=device)
    T = tr.diffusion.T
    get_loss, sample_one = source_style(tr.schedule, device)

    # A second, identical model and optimizer for the source-style loop.
    src_model = type(tr.model)(tr.model_cfg).to(device)
    src_model.load_state_dict(tr.model.state_dict())
    src_opt = torch.optim.Adam(src_model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)

    def ours_train(n):
        for _ in range(n):
            tr.train_step()
        _sync(device)

    def source_train(n):
        src_model.train()
        for _ in range(n):
            x_0 = tr.data.batch(B, g).to(device)
            t = torch.randint(0, T, (B,), device=device).long()
            src_opt.zero_grad()
            loss = get_loss(src_model, x_0, t)
            loss.backward()
            src_opt.step()
        _sync(device)

    def timed(fn, n, repeats):
        fn(max(2, n // 10))  # warm-up
        out = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(n)
            out.append(time.perf_counter() - t0)
        return statistics.median(out)

    rows = []
    t_ours = timed(ours_train, args.train_steps, args.repeats)
    t_src = timed(source_train, args.train_steps, args.repeats)
    rows.append(("training (batch 128)", args.train_steps * B / t_ours, args.train_steps * B / t_src))

    sampler = sampler_from_modules(tr.ema, tr.schedule, tr.data_cfg, device)
    src_model.eval()
    shape = sampler.shape
    t0 = time.perf_counter()
    sample(sampler, args.sample_n, seed=0)
    _sync(device)
    ours_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(args.source_sample_n):
        sample_one(src_model, shape, T)
    _sync(device)
    src_s = time.perf_counter() - t0
    rows.append((f"sampling (T = {T})", args.sample_n / ours_s, args.source_sample_n / src_s))

    print(f"device {device.type}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"SimpleUnet {list(tr.model_cfg.down_channels)}, 8x8 digits, T = {T}; "
          f"ddpm-check samples {args.sample_n} images in one batch, the source-style loop one at a time")
    print()
    print("| stage | ddpm-check (images/s) | source-style loop (images/s) | ratio |")
    print("| --- | ---: | ---: | ---: |")
    for name, ours, src in rows:
        print(f"| {name} | {ours:,.1f} | {src:,.1f} | {ours / src:.2f}x |")


if __name__ == "__main__":
    main()
