"""What the command lines share (``diffusion.sample``, ``training.evaluate``, the benchmarks): argparse types
that refuse in one line, the sampler and class options as flags, and the seed range."""

from __future__ import annotations

import argparse
from typing import Any

import torch

from .pipeline import DiffusionPipeline
from .samplers import SAMPLERS, SPACINGS

MAX_SEED = 2**53 - 1  # what a browser's number holds exactly: the CLI, the studio and its API take the same seeds


def int_arg(low: int, high: int | None = None) -> Any:
    """An argparse type: a whole number from ``low`` (to ``high``), refused in one line otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(
                f"{value} is out of range: give {low} to {high}"
                if high is not None
                else f"{value} is out of range: give at least {low}"
            )
        return value

    parse.__name__ = "integer"
    return parse


def steps_list(text: str) -> list[int]:
    """An argparse type: one step count or a comma-separated list of them (``--mode consistency``)."""
    parse = int_arg(1)
    return [parse(part.strip()) for part in text.split(",")]


steps_list.__name__ = "step count(s)"


def check_device(name: str) -> str:
    """``name`` if torch can sample on that device here (cpu, cuda, cuda:N, mps), else ArgumentTypeError
    saying what is available."""
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{name!r} is not a device; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(
                f"{name!r}: CUDA is not available on this machine (no GPU or driver, or a CPU-only "
                "PyTorch); use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(
                f"{name!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                f"cuda:0 to cuda:{torch.cuda.device_count() - 1}"
            )
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError(f"{name!r}: MPS is not available on this machine; use --device cpu")
    elif dev.type != "cpu":
        raise argparse.ArgumentTypeError(f"{name!r}: sampling runs on cpu, cuda[:N] or mps")
    return name


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block) with exit status 2."""

    def error(self, message: str) -> Any:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def add_sampler_arguments(p: argparse.ArgumentParser, model_required: bool = True, step_lists: bool = False) -> None:
    """--model, --sampler and the sampler options (shared with ``training.evaluate``); ``step_lists``:
    --steps also takes a comma-separated list (a list of ints then)."""
    p.add_argument(
        "--model", required=model_required, help="a model folder (diffusers layout) or a Hugging Face Hub repo id"
    )
    p.add_argument("--revision", default=None, help="Hub branch, tag or commit to pin")
    p.add_argument("--offline", action="store_true", help="use only the local Hub cache")
    p.add_argument("--sampler", default="ddim", choices=sorted(SAMPLERS))
    p.add_argument(
        "--steps",
        type=steps_list if step_lists else int_arg(1),
        default=None,
        help="number of sampling steps (default: the sampler's: DDPM 1000, DDIM 50)"
        + ("; --mode consistency: a list, e.g. 10,20,50" if step_lists else ""),
    )
    p.add_argument("--eta", type=float, default=None, help="DDIM noise scale: 0 deterministic, 1 DDPM-like")
    p.add_argument(
        "--variance-type", choices=["fixed_small", "fixed_large"], default=None, help="DDPM posterior variance"
    )
    p.add_argument("--spacing", choices=SPACINGS, default=None, help="timestep selection")
    clip = p.add_mutually_exclusive_group()
    clip.add_argument(
        "--clip", dest="clip_sample", action="store_true", default=None, help="clip predicted x0 to [-1, 1]"
    )
    clip.add_argument("--no-clip", dest="clip_sample", action="store_false", help="do not clip predicted x0")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other sampler option, e.g. use_clipped_model_output=true",
    )


# Sampler options with a flag of their own: option -> (the parsed argument, the flag as typed).
OPTION_FLAGS = {
    "num_inference_steps": ("steps", "--steps"),
    "eta": ("eta", "--eta"),
    "variance_type": ("variance_type", "--variance-type"),
    "timestep_spacing": ("spacing", "--spacing"),
    "clip_sample": ("clip_sample", "--clip / --no-clip"),
}


def sampler_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The sampler options given on the command line (None: the checkpoint's or the sampler's default)."""
    options: dict[str, Any] = {key: getattr(args, dest) for key, (dest, _) in OPTION_FLAGS.items()}
    given: set[str] = set()
    for item in args.option:
        if "=" not in item:
            raise ValueError(f"--option wants KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if key in OPTION_FLAGS:  # one way to give each value, checked one way
            raise ValueError(f"--option {key}=... has its own flag: use {OPTION_FLAGS[key][1]}")
        if key in given:
            raise ValueError(f"--option {key} is given twice; give each option once")
        given.add(key)
        options[key] = value  # typed by the sampler's options (diffusion.typed)
    return options


def add_class_arguments(p: argparse.ArgumentParser) -> None:
    """--class-label and --guidance-scale, for class-conditional models (shared with ``training.evaluate``)."""
    p.add_argument(
        "--class-label", default=None,
        help="class-conditional models: a class index or name (e.g. 7 or sneaker), several separated by commas "
        "(one row of -n images each, from the same noise), or all (one row per class)",
    )
    p.add_argument(
        "--guidance-scale", type=float, default=None,
        help="classifier-free guidance: eps_null + s (eps_cond - eps_null); 0 the unconditional model, 1 the "
        "conditional one, above 1 guided (default: the model's classes.json)",
    )


def class_rows(pipe: DiffusionPipeline, text: str | None) -> list[int] | None:
    """The class of each row that ``--class-label`` asks for; None for an unconditional model (ValueError
    when a conditional model gets no label or an unconditional one gets one)."""
    if text is None:
        if pipe.class_conditional:
            listing = f": {pipe.classes.listing()}" if pipe.classes else ""
            raise ValueError(f"{pipe.source} is class-conditional: give --class-label (an index, a name or all)"
                             f"{listing}.")
        return None
    if not pipe.class_conditional:
        raise ValueError(f"{pipe.source} is unconditional: it takes no --class-label; leave it out.")
    if pipe.classes is None:
        raise ValueError(f"{pipe.source} embeds labels as numbers or vectors; sample it from Python.")
    return pipe.classes.labels(text if text.strip().lower() == "all" else text.split(","))
