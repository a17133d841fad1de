"""The UNet compiled ahead of time with AOTInductor, for sampling on the CPU.

``torch.export`` captures the UNet's graph (batch size dynamic, 1 to ``MAX_BATCH``), AOTInductor
compiles it with the weights into one ``.pt2`` package, and loading the package later takes a fraction
of a second: no compile ever happens while a request runs. Packages live in a cache folder keyed by
what makes them valid (the weights' bytes, the architecture, torch's version and the CPU's instruction
set), so a package built for other weights or another machine is never used by mistake.

    python -m diffusion.compiled checkpoints/fashion-mnist      # build (about a minute on 2 cores), once

``scripts/setup.sh`` builds the bundled model's package; the studio loads packages that exist and runs
eagerly otherwise (``python app.py --compile`` builds missing ones before it starts serving).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import torch

from . import hub
from .files import atomic_write
from .unet import UNet, build_unet

MAX_BATCH = 64  # the largest batch a package takes (the studio's image limit); larger batches run eagerly
FORMAT = 1  # bump when what a package holds changes


def cache_dir() -> Path:
    """``DIFFUSION_COMPILED_CACHE``, else ``~/.cache/repro-diffusion/compiled``."""
    env = os.environ.get("DIFFUSION_COMPILED_CACHE", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "repro-diffusion" / "compiled"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def package_key(unet: UNet) -> str:
    """A hash of everything a package depends on: weights, config, torch, CPU instruction set."""
    h = hashlib.sha256()
    h.update(
        json.dumps(
            {
                "format": FORMAT,
                "config": repr(unet.config),
                "torch": torch.__version__,
                "capability": torch.backends.cpu.get_cpu_capability(),
                "machine": platform.machine(),
                "flags": _cpu_flags(),
                "python": sys.version_info[:2],
                "max_batch": MAX_BATCH,
            }
        ).encode()
    )
    for name, tensor in sorted(unet.state_dict().items()):
        h.update(name.encode())
        plain = torch.empty(tensor.shape, dtype=tensor.dtype).copy_(tensor.detach())  # row-major, whatever the layout
        h.update(plain.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def package_path(unet: UNet, folder: str | Path | None = None) -> Path:
    return Path(folder or cache_dir()) / f"unet-{package_key(unet)}.pt2"


def compiler_problem() -> str | None:
    """Why AOTInductor cannot build a CPU package here (None if nothing is known to be missing)."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except ImportError:
        return None
    except Exception as e:  # InvalidCxxCompiler: no g++/clang++ found
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"no C++ compiler for Inductor ({first})"
    return None


class CompiledUNet:
    """``unet(x, t)`` through an AOTInductor package where it applies (CPU, float32, no autograd,
    1 to :data:`MAX_BATCH` images), the eager UNet otherwise. Outputs equal the eager UNet's to
    float rounding (about 1e-6)."""

    def __init__(self, unet: UNet, path: Path) -> None:
        self.unet = unet
        self.path = path
        self._runner = torch._inductor.aoti_load_package(str(path))

    @staticmethod
    def covers(batch: int) -> bool:
        """Whether a batch of this many images runs compiled (else eagerly)."""
        return 1 <= batch <= MAX_BATCH

    def applies(self, x: torch.Tensor) -> bool:
        return (
            x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.covers(x.shape[0])
            and not torch.is_grad_enabled()
        )

    def __call__(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float32)
        if not self.applies(x) or t.ndim != 0:
            return self.unet(x, t)
        return self._runner(x.contiguous(), t)


def build(unet: UNet, folder: str | Path | None = None, verbose: bool = True) -> Path:
    """Export and compile ``unet`` into its package (written atomically); returns the path. A package
    that exists already is reused. RuntimeError if this machine cannot compile."""
    path = package_path(unet, folder)
    if path.is_file():
        return path
    problem = compiler_problem()
    if problem:
        raise RuntimeError(f"Cannot compile the UNet ahead of time: {problem}.")
    cfg = unet.config
    ref = UNet(cfg).eval().requires_grad_(False)  # a plain-layout copy: the package takes contiguous NCHW input
    ref.load_state_dict(unet.state_dict())
    x = torch.randn(2, cfg.in_channels, cfg.sample_size, cfg.sample_size)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    start = time.perf_counter()
    if verbose:
        print(f"compiling the UNet ahead of time into {path} (about a minute on 2 CPU cores)...", flush=True)
    with torch.no_grad():
        program = torch.export.export(ref, (x, torch.tensor(500.0)), dynamic_shapes=({0: batch}, None))
    atomic_write(path, lambda p: torch._inductor.aoti_compile_and_package(program, package_path=str(p)))
    if verbose:
        print(f"compiled in {time.perf_counter() - start:.0f} s", flush=True)
    return path


def load(unet: UNet, folder: str | Path | None = None, build_missing: bool = False) -> CompiledUNet | None:
    """The UNet's package loaded (built first if ``build_missing``), or None when there is none or it
    cannot be loaded (a warning says why; sampling then stays eager)."""
    try:
        path = build(unet, folder) if build_missing else package_path(unet, folder)
        if not path.is_file():
            return None
        return CompiledUNet(unet, path)
    except Exception as e:  # noqa: BLE001 - a missing compiler, a corrupt package: eager still works
        warnings.warn(
            f"The compiled UNet is unavailable ({type(e).__name__}: {e}); sampling runs eagerly.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None


def main(argv: list[str] | None = None) -> int:
    """``python -m diffusion.compiled MODEL...``: build the packages of these models."""
    p = argparse.ArgumentParser(
        prog="python -m diffusion.compiled", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("models", nargs="+", help="model folders or Hub repo ids")
    p.add_argument("--cache-dir", default=None, help=f"where packages go (default {cache_dir()})")
    args = p.parse_args(argv)
    for model in args.models:
        try:
            checkpoint = hub.load_checkpoint(model)
            print(build(build_unet(checkpoint.unet_config, checkpoint.state_dict), args.cache_dir))
        except (ValueError, TypeError, RuntimeError, OSError) as e:
            print(f"error: {model}: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
