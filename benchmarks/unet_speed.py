"""UNet speed: ours against diffusers' UNet2DModel holding the same weights, in one run.

    python -m benchmarks.unet_speed                 # CPU fp32 at batch 1 and 16, plus bf16 autocast
    python -m benchmarks.unet_speed --compile       # also both models through torch.compile
    python -m benchmarks.unet_speed --device cuda

The google CIFAR-10 architecture (35.7 M parameters, random weights). Ours runs eagerly as the
pipeline runs it: channels-last convolution weights, inside ``UNet.frozen_weights`` (the pipeline enters
it once per sampling run, so oneDNN's weight reorder happens once per run, not at every step);
diffusers as ``UNet2DModel`` runs by default. Measurements alternate between the models so a noisy
machine slows them alike; the median of the rounds is reported. ``--compile`` adds both models
compiled the same way (``torch.compile``, default mode, as ``DiffusionPipeline.compile`` does) and
prints their compile times and both ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from diffusion.unet import UNet, UNetConfig

CIFAR10 = dict(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
               down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
               up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), layers_per_block=2,
               attention_head_dim=None, flip_sin_to_cos=False, freq_shift=1, downsample_padding=0, norm_eps=1e-6)


def timed(fn, x, t, reps: int, device: str) -> float:
    """Seconds per call, the median of ``reps``."""
    times = []
    for _ in range(reps):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn(x, t)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds per batch size")
    p.add_argument("--reps", type=int, default=3, help="calls per model per round")
    p.add_argument("--no-bf16", action="store_true")
    p.add_argument(
        "--channels-last-diffusers", action="store_true", help="also time diffusers with channels-last weights"
    )
    p.add_argument("--compile", action="store_true", help="also time both models through torch.compile")
    args = p.parse_args()

    from diffusers import UNet2DModel

    torch.manual_seed(0)
    ref = UNet2DModel(**CIFAR10).eval().to(args.device)
    with torch.no_grad():
        for prm in ref.parameters():
            prm.normal_(0, 0.02)
    ours = UNet(UNetConfig(**CIFAR10)).eval()
    ours.load_state_dict(ref.state_dict())
    # as DiffusionPipeline.to() places it: channels-last convolution weights
    ours.to(args.device, memory_format=torch.channels_last)
    ref_cl = UNet2DModel(**CIFAR10).eval()
    ref_cl.load_state_dict(ref.state_dict())
    ref_cl.to(args.device, memory_format=torch.channels_last)
    n_params = sum(p.numel() for p in ours.parameters()) / 1e6
    print(
        f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{n_params:.1f} M parameters"
    )

    def run_ref(x, t):
        with torch.inference_mode():
            return ref(x, t).sample

    def run_ref_cl(x, t):
        with torch.inference_mode():
            return ref_cl(x.contiguous(memory_format=torch.channels_last), t).sample

    packed: dict = {}  # the oneDNN-reordered weights of one "sampling run" (the pipeline's model_fn)

    def run_ours(x, t):
        with torch.inference_mode(), ours.frozen_weights(packed):
            return ours(x, t)

    def run_ours_bf16(x, t):
        with torch.inference_mode(), torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16):
            return ours(x, t)

    if args.compile:
        # Compiled as DiffusionPipeline.compile() compiles ours (no_grad, float32 t); diffusers the same way.
        ours_c, ref_c = torch.compile(ours), torch.compile(ref)

        def run_ours_c(x, t):
            with torch.no_grad():
                return ours_c(x, t.float())

        def run_ref_c(x, t):
            with torch.no_grad():
                return ref_c(x, t.float()).sample

    for batch in (int(b) for b in args.batches.split(",")):
        x = torch.randn(batch, 3, 32, 32, device=args.device)
        t = torch.randint(0, 1000, (batch,), device=args.device)
        diff = (run_ours(x, t) - run_ref(x, t)).abs().max().item()
        for fn in (run_ref, run_ours):  # warm-up
            fn(x, t)
        ref_s, our_s = [], []
        for _ in range(args.rounds):
            ref_s.append(timed(run_ref, x, t, args.reps, args.device))
            our_s.append(timed(run_ours, x, t, args.reps, args.device))
        r, o = batch / statistics.median(ref_s), batch / statistics.median(our_s)
        print(
            f"batch {batch:3d} fp32: diffusers {r:7.2f} image-steps/s | ours {o:7.2f} image-steps/s | "
            f"ratio {o / r:.2f} | max |diff| {diff:.1e}"
        )
        if args.compile:
            compile_s = {}
            for name, fn in (("ours", run_ours_c), ("diffusers", run_ref_c)):
                start = time.perf_counter()
                fn(x, t)
                compile_s[name] = time.perf_counter() - start
            diff_c = (run_ours_c(x, t) - run_ref(x, t)).abs().max().item()
            ref_cs, our_cs, ref_s2, our_s2 = [], [], [], []
            for _ in range(args.rounds):  # all four interleaved
                ref_s2.append(timed(run_ref, x, t, args.reps, args.device))
                our_s2.append(timed(run_ours, x, t, args.reps, args.device))
                ref_cs.append(timed(run_ref_c, x, t, args.reps, args.device))
                our_cs.append(timed(run_ours_c, x, t, args.reps, args.device))
            r2, o2 = batch / statistics.median(ref_s2), batch / statistics.median(our_s2)
            rc, oc = batch / statistics.median(ref_cs), batch / statistics.median(our_cs)
            print(
                f"batch {batch:3d} compiled: diffusers {rc:7.2f} | ours {oc:7.2f} image-steps/s | "
                f"ours compiled / diffusers compiled {oc / rc:.2f} | ours compiled / diffusers eager {oc / r2:.2f} "
                f"(eager in these rounds: diffusers {r2:.2f}, ours {o2:.2f}) "
                f"| compile s: ours {compile_s['ours']:.0f}, diffusers {compile_s['diffusers']:.0f} "
                f"| max |diff| {diff_c:.1e}"
            )
        if args.channels_last_diffusers:
            c = batch / statistics.median([timed(run_ref_cl, x, t, args.reps, args.device) for _ in range(args.rounds)])
            print(
                f"batch {batch:3d} fp32: diffusers moved to channels-last by hand {c:7.2f} image-steps/s "
                f"(ours / that: {o / c:.2f})"
            )
        if not args.no_bf16:
            bf16_out = run_ours_bf16(x, t).float()
            dev = (bf16_out - run_ours(x, t)).abs().max().item()
            run_ours_bf16(x, t)
            b = batch / statistics.median(
                [timed(run_ours_bf16, x, t, args.reps, args.device) for _ in range(max(1, args.rounds // 2))]
            )
            print(
                f"batch {batch:3d} bf16 autocast (ours): {b:7.2f} image-steps/s, {b / o:.2f}x fp32, "
                f"max |bf16 - fp32| {dev:.1e}"
            )


if __name__ == "__main__":
    main()
