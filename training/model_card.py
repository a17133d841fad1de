"""Turn a finished run into a shippable model folder: the EMA export, a loss curve, an 8x8 grid of
DDIM-50 samples from seed 0, and a model card README with the exact command and numbers.

    python -m training.model_card --run runs/fashion-mnist --out checkpoints/fashion-mnist \
        --command "python -m training.train fashion-mnist"
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Any

import torch

import diffusion
from diffusion.files import atomic_write
from diffusion.images import save_grid


def loss_curve(log_csv: Path, out_png: Path, upto: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with log_csv.open() as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) <= upto]
    steps = [int(r["step"]) for r in rows]
    loss = [float(r["loss"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=120)
    ax.plot(steps, loss, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel(f"training MSE (mean of {steps[0]} steps)" if steps else "training MSE")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(out_png, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)


def previous_training(init_from: str) -> dict[str, Any]:
    """What the model a run started from (``init_from``) had seen: images and training seconds, its own
    predecessors included; zeros for a run from scratch."""
    none = {"source": "", "images": 0, "wall_s": 0.0}
    config = Path(init_from) / "training_config.json"
    if not init_from or not config.is_file():
        return {**none, "source": init_from}
    cfg = json.loads(config.read_text())
    earlier = cfg.get("previous_training", none)
    return {"source": init_from, "images": cfg["trained_steps"] * cfg["batch_size"] + earlier["images"],
            "wall_s": cfg.get("wall_s", 0.0) + earlier["wall_s"]}


def started_from(init_from: str, before: dict[str, Any]) -> str:
    if not init_from:
        return "random weights"
    return f"`{init_from}` ({before['images'] / 60000:.1f} epochs of earlier training), fresh optimizer"


def _lr_decay(train_cfg: dict[str, Any]) -> str:
    """The learning-rate schedule after warmup, as the card's optimiser line says it (constant: nothing)."""
    if train_cfg.get("lr_schedule", "constant") == "constant":
        return ""
    return f", then cosine to {train_cfg.get('min_lr', 0.0):g}"


def _ema(train_cfg: dict[str, Any]) -> str:
    """The EMA as the card's optimiser line says it: its decay, and whether it warmed up (see train.ema_decay)."""
    warmup = "with warmup" if train_cfg.get("ema_warmup", True) else "from the first step (no warmup)"
    return f"EMA {train_cfg['ema_decay']} {warmup}"


def card_grid(pipe: diffusion.DiffusionPipeline, out: Path) -> tuple[str, str, float]:
    """The card's picture, ``samples-ddim50-seed0.png`` (DDIM-50 from seed 0; a row per class for a class-conditional
    model, at its recommended guidance): what it shows, the command that makes it, and its seconds."""
    start = time.perf_counter()
    grid_cmd = f"python -m diffusion.sample --model {out} --sampler ddim --steps 50 --seed 0"
    if pipe.classes is None:
        images = pipe.sample("ddim", n=64, seed=0, num_inference_steps=50)
        grid_cmd += " -n 64 --out grid.png"
        grid_what = "64 samples: DDIM, 50 steps, eta 0, seed 0"
    else:  # a row per class from the same x_T, at the recommended guidance (as --class-label all draws it)
        k, scale = len(pipe.classes.names), pipe.classes.guidance_scale
        noise = pipe.initial_noise(8, 0).repeat(k, 1, 1, 1)
        labels = torch.arange(k).repeat_interleave(8)
        images = pipe.sample("ddim", noise=noise, seed=0, num_inference_steps=50, class_labels=labels,
                             guidance_scale=scale)
        grid_cmd += f" --class-label all -n 8 --guidance-scale {scale:g} --out grid.png"
        grid_what = (f"a row per class ({', '.join(pipe.classes.names)}), the same 8 x_T in every row: DDIM, 50 "
                     f"steps, eta 0, seed 0, guidance {scale:g}")
    save_grid(images, out / "samples-ddim50-seed0.png", nrow=8)
    return grid_what, grid_cmd, time.perf_counter() - start


def card_head(pipe: diffusion.DiffusionPipeline, out: Path, n_params: int, train_cfg: dict[str, Any]) -> tuple[str, str]:
    """The card's front matter and introduction, and (class-conditional models) its conditioning row."""
    if pipe.classes is None:
        head = f"""---
library_name: diffusers
pipeline_tag: unconditional-image-generation
tags: [ddpm, fashion-mnist, pytorch]
datasets: [fashion_mnist]
license: mit
---

# DDPM on Fashion-MNIST (28x28, {n_params / 1e6:.2f} M parameters)

The offline default model of Repro-Diffusion-Models: a DDPM UNet (Ho et al. 2020) trained on the
60,000 Fashion-MNIST training images on a 2-core CPU. Loads with this repository's
`diffusion.load("{out}")` and with diffusers'
`DDPMPipeline.from_pretrained("{out}")`. The weights are the EMA weights.
"""
        conditioning = ""
    else:
        head = f"""---
library_name: diffusers
tags: [ddpm, classifier-free-guidance, class-conditional, fashion-mnist, pytorch]
datasets: [fashion_mnist]
license: mit
---

# Class-conditional DDPM on Fashion-MNIST with classifier-free guidance (28x28, {n_params / 1e6:.2f} M parameters)

The bundled class-conditional model of Repro-Diffusion-Models: a DDPM UNet (Ho et al. 2020) with a label table
added to its time embedding (diffusers' `UNet2DModel` with `num_class_embeds` = {pipe.unet.config.num_class_embeds}:
{len(pipe.classes.names)} classes and the null label {pipe.classes.null_label}), trained for classifier-free guidance
(Ho and Salimans 2022) on the 60,000 labelled Fashion-MNIST training images on a 2-core CPU. Loads with this
repository's `diffusion.load("{out}")`; its `unet/` loads in diffusers' `UNet2DModel`, which takes the same
`class_labels`. `classes.json` names the classes, the null label and the recommended guidance scale
({pipe.classes.guidance_scale:g}). The weights are the EMA weights.
"""
        conditioning = (f"| conditioning | {len(pipe.classes.names)} classes and a null label; each label replaced by the "
                        f"null label with probability {train_cfg['cond_drop_prob']:g}; the label table at "
                        f"{train_cfg.get('label_lr_scale', 1.0):g}x the learning rate |\n")
    return head, conditioning


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="the run folder (holds export/, log.csv)")
    p.add_argument("--out", required=True)
    p.add_argument("--command", required=True, help="the command that trained it, for the card")
    p.add_argument(
        "--note", default="", help="a sentence about the run for the card (e.g. what else shared the machine)"
    )
    p.add_argument("--section", action="append", default=[], metavar="FILE.md",
                   help="markdown appended to the card (measured tables, the recipe comparison); repeatable")
    args = p.parse_args(argv)
    run, out = Path(args.run), Path(args.out)
    export = run / "export"
    pipe = diffusion.load(export)
    train_cfg = json.loads((export / "training_config.json").read_text())
    with (run / "log.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) <= train_cfg["trained_steps"]]
    images_seen = int(rows[-1]["step"]) * train_cfg["batch_size"]
    wall_s = float(rows[-1]["elapsed_s"])  # logged to 1 ms (older logs: 0.1 s, where a few steps log 0.0)
    rate = f"{images_seen / wall_s:.0f} images/s" if wall_s > 0 else "too fast to time"
    # A run continued from another model (--init_from) counts that model's training too; read it before
    # the export below may overwrite it (the bundled model is continued in place).
    before = previous_training(train_cfg.get("init_from", ""))
    train_cfg["previous_training"], train_cfg["wall_s"] = before, round(wall_s, 1)
    pipe.save_pretrained(out, {"training_config.json": json.dumps(train_cfg, indent=2) + "\n"})
    loss_curve(run / "log.csv", out / "loss.png", train_cfg["trained_steps"])
    grid_what, grid_cmd, sample_s = card_grid(pipe, out)
    last = rows[-1]
    final_loss = sum(float(r["loss"]) for r in rows[-10:]) / min(10, len(rows))
    n_params = sum(t.numel() for t in pipe.unet.parameters())
    head, conditioning = card_head(pipe, out, n_params, train_cfg)
    card = f"""{head}
![{grid_what}](samples-ddim50-seed0.png)

*{grid_what[0].upper()}{grid_what[1:]} (`{grid_cmd}`; {sample_s:.1f} s on the CPU).*

## Training

| | |
|---|---|
| command | `{args.command}` |
| steps | {int(last["step"])} (batch {train_cfg["batch_size"]}, {images_seen / 60000:.1f} epochs) |
| started from | {started_from(train_cfg.get("init_from", ""), before)} |
| in all | {(images_seen + before["images"]) / 60000:.1f} epochs ({images_seen + before["images"]:,} images), {(wall_s + before["wall_s"]) / 60:.0f} min of training |
| wall time | {wall_s / 60:.0f} min of training ({train_cfg["precision"]}, {rate}), sampling grids excluded |
| loss | {train_cfg.get("loss_weighting", "uniform")} weighting{f" (gamma {train_cfg.get('min_snr_gamma')})" if train_cfg.get("loss_weighting") == "min_snr" else ""} |
| final loss | {final_loss:.4f} (the {"min-SNR-weighted " if train_cfg.get("loss_weighting") == "min_snr" else ""}training MSE on {train_cfg["prediction_type"]}, mean of the last logged intervals) |
| UNet | block_out_channels {train_cfg["unet"]["block_out_channels"]}, attention at 7x7, {train_cfg["unet"]["layers_per_block"]} resnets per level, dropout {train_cfg["dropout"]} |
| diffusion | T = {train_cfg["num_train_timesteps"]}, {train_cfg["beta_schedule"]} betas {train_cfg["beta_start"]} to {train_cfg["beta_end"]}, predicts {train_cfg["prediction_type"]} |
| optimiser | AdamW lr {train_cfg["lr"]} ({train_cfg["warmup_steps"]} warmup steps{_lr_decay(train_cfg)}), grad clip {train_cfg["grad_clip"]}, {_ema(train_cfg)} |
{conditioning}
{args.note}

{"".join(Path(f).read_text().rstrip() + chr(10) + chr(10) for f in args.section)}
The whole resolved configuration is in `training_config.json`.

![training loss](loss.png)
"""
    atomic_write(out / "README.md", lambda p: p.write_text(card))
    print(f"wrote {out} ({sum(f.stat().st_size for f in out.rglob('*') if f.is_file()) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
