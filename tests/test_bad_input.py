"""Issue #13: every bad input gets a clear message, checked before any work: the sampler options (one check
for every sampler), the CLI, the loader, atomic writes and training. Table-driven; each case asserts the
exit code, the message, and that nothing (no output, no temporary file) is left behind."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import stat
import typing
from pathlib import Path

import numpy as np
import pytest
import torch

import diffusion
import diffusion.sample as cli
from diffusion import CheckpointError
from diffusion.files import atomic_write, check_writable
from diffusion.pipeline import DiffusionPipeline
from diffusion.samplers import SAMPLERS, get_sampler
from diffusion.samplers.base import OPTION_RANGES
from training.data import DEBIAN_FASHION_MNIST, load_images

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "checkpoints" / "fashion-mnist"
ROOT_USER = os.geteuid() == 0  # root writes into read-only folders: those cases use a file or /proc instead
LFS_POINTER = (b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64 + b"\nsize 6543210\n")


# ----------------------------------------------------------------------------- options: one check, every sampler

def option_cases():
    """For every registered sampler (those added later too) and every option, values its type refuses."""
    for name, spec in SAMPLERS.items():
        hints = typing.get_type_hints(spec.options)
        for f in dataclasses.fields(spec.options):
            hint = hints[f.name]
            if hint is float:
                bad = [(math.nan, "finite number"), (math.inf, "finite number"), (-math.inf, "finite number"),
                       ("half", "finite number"), ("nan", "finite number"), (True, "finite number")]
            elif hint is int:
                bad = [(2.5, "whole number"), ("2.5", "whole number"), ("three", "whole number"),
                       (True, "whole number"), (math.nan, "whole number")]
            elif hint is bool:
                bad = [("maybe", "true or false"), (1, "true or false"), (None, "true or false")]
            elif typing.get_origin(hint) is typing.Literal:
                bad = [("no-such-choice", "is not one of"), (True, "is not one of")]
            else:
                continue
            for value, message in bad:
                yield pytest.param(name, f.name, value, message, id=f"{name}-{f.name}={value!r}")


@pytest.mark.parametrize("sampler,option,value,message", list(option_cases()))
def test_every_samplers_options_are_checked_by_type(sampler, option, value, message):
    with pytest.raises(ValueError, match=message):
        get_sampler(sampler).make_options(**{option: value})


def test_option_text_is_typed_by_the_one_coercion():
    """Text from a command line (``--option steps_offset=1``) and a number widget's floats become the
    option's type through diffusion.typed.coerce, which every caller shares."""
    opts = get_sampler("ddim").make_options(num_inference_steps="20", eta="0.5", clip_sample="false", steps_offset=1.0)
    assert (opts.num_inference_steps, opts.eta, opts.clip_sample, opts.steps_offset) == (20, 0.5, False, 1)
    assert type(opts.num_inference_steps) is int and type(opts.eta) is float
    assert get_sampler("dpm-solver++").make_options(solver_order="3").solver_order == 3  # an int Literal from text


@pytest.mark.parametrize(
    "sampler,values,message",
    [
        (
            "ddim",
            {"steps_offset": -5},
            "steps_offset must be a non-negative integer (every timestep must stay in 0..T-1), got -5",
        ),
        ("ddim", {"clip_sample_range": math.nan}, "clip_sample_range must be a finite number, got nan"),
        ("ddim", {"clip_sample_range": 0.0}, "clip_sample_range must be positive, got 0.0"),
        ("ddim", {"clip_sample_range": -1}, "clip_sample_range must be positive, got -1.0"),
        ("ddim", {"eta": -0.1}, "eta must be between 0 and 1"),
        ("ddim", {"eta": math.nan}, "eta must be a finite number"),
        ("ddim", {"clip_sample_range": 10**400}, "clip_sample_range must be a finite number, got 1000"),
        ("ddim", {"num_inference_steps": 0}, "num_inference_steps must be a positive integer, got 0"),
        ("ddim", {"num_inference_steps": -3}, "num_inference_steps must be a positive integer, got -3"),
        ("ddpm", {"clip_sample": "maybe"}, "clip_sample must be true or false, got 'maybe'"),
        ("heun", {"clip_sample_range": math.inf}, "clip_sample_range must be a finite number, got inf"),
        ("euler", {"steps_offset": -1}, "steps_offset must be a non-negative integer"),
        ("dpm-solver++", {"solver_order": True}, "solver_order=True is not one of 1, 2, 3"),
    ],
)
def test_option_values_are_refused_with_the_reason(sampler, values, message):
    with pytest.raises(ValueError) as e:
        get_sampler(sampler).make_options(**values)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
@pytest.mark.parametrize("offset", [1000, 10**21])
def test_offsets_past_the_model_are_refused_once_T_is_known(sampler, offset):
    """An offset is refused against the model's T before any timestep is computed (10**21 overflowed int64)."""
    spec = get_sampler(sampler)
    options = spec.make_options(steps_offset=offset, num_inference_steps=10)
    with pytest.raises(
        ValueError, match=r"steps_offset must be between 0 and 999 \(every timestep must stay in 0..T-1, T = 1000\)"
    ):
        spec.timesteps(1000, options)


def test_options_are_normalised():
    """Whole floats (the studio's number boxes) become ints, ints become floats, numpy scalars plain Python."""
    o = get_sampler("ddim").make_options(num_inference_steps=20.0, eta=np.float32(0.5), clip_sample=np.bool_(False),
                                         clip_sample_range=2, steps_offset=np.int64(1))
    assert (o.num_inference_steps, o.eta, o.clip_sample, o.clip_sample_range, o.steps_offset) == (
        20,
        0.5,
        False,
        2.0,
        1,
    )
    assert [type(v) for v in (o.num_inference_steps, o.eta, o.clip_sample, o.clip_sample_range, o.steps_offset)] == [
        int,
        float,
        bool,
        float,
        int,
    ]
    assert get_sampler("dpm-solver++").make_options(solver_order=3.0).solver_order == 3


def test_a_new_sampler_gets_the_checks_for_free(monkeypatch):
    """A sampler registered tomorrow, with options of its own, is checked by type hints and OPTION_RANGES."""
    from diffusion.samplers.base import BaseOptions, Range, register

    @dataclasses.dataclass(frozen=True)
    class NewOptions(BaseOptions):
        s_noise: float = 1.0
        churn: bool = False

    monkeypatch.setitem(OPTION_RANGES, "s_noise", Range(0, 2))
    monkeypatch.setattr("diffusion.samplers.base.SAMPLERS", dict(SAMPLERS))
    register("new", NewOptions, "a test sampler")(lambda *a, **k: iter(()))
    spec = get_sampler("new")
    for values, message in [
        ({"s_noise": math.nan}, "s_noise must be a finite number"),
        ({"s_noise": 3.0}, "s_noise must be between 0 and 2"),
        ({"churn": "yes"}, "churn must be true or false"),
        ({"steps_offset": -5}, "steps_offset must be a non-negative"),
    ]:
        with pytest.raises(ValueError, match=message):
            spec.make_options(**values)
    assert spec.make_options(s_noise=1).s_noise == 1.0


def test_planned_timesteps_outside_the_model_are_refused(monkeypatch):
    """The last line of defence: whatever a sampler's plan, the model is only evaluated at 0..T-1."""
    spec = dataclasses.replace(get_sampler("euler"), plan=lambda T, o: [999.0, 500.0, -1.0])
    with pytest.raises(ValueError, match=r"evaluate the model at t = -1, outside its trained timesteps 0..999"):
        spec.timesteps(1000, spec.make_options())


# ----------------------------------------------------------------------------- trailing overshoot (t = -1)

def diffusers_scheduler(name: str, **config):
    import diffusers

    classes = {"ddpm": diffusers.DDPMScheduler, "ddim": diffusers.DDIMScheduler, "pndm": diffusers.PNDMScheduler,
               "euler": diffusers.EulerDiscreteScheduler, "heun": diffusers.HeunDiscreteScheduler,
               "dpm-solver++": diffusers.DPMSolverMultistepScheduler}
    betas = dict(beta_start=1e-4, beta_end=0.02) if name == "heun" else {}
    return classes[name](**betas, **config)


# model evaluations at N = 61: ours, then diffusers' (one more step, at t = -1)
EVALUATIONS_61 = {
    ("ddpm", False): (61, 62),
    ("ddim", False): (61, 62),
    ("euler", False): (61, 62),
    ("dpm-solver++", False): (61, 62),
    ("heun", False): (2 * 61 - 1, 2 * 62 - 1),
    ("pndm", False): (61 + 9, 62 + 9),
    ("pndm", True): (61 + 1, 62 + 1),
}


@pytest.mark.parametrize("name,skip_prk", sorted(EVALUATIONS_61))
def test_trailing_spacing_takes_the_steps_asked_for(name, skip_prk):
    """At N = 61 of T = 1000, diffusers' trailing arange(T, 0, -T / N) overshoots to a 62nd point, t = -1.
    We keep N timesteps: the model is never evaluated at t = -1 (a documented deviation, docs/diffusers-parity.md)."""
    extra = {"skip_prk_steps": True} if skip_prk else {}
    scheduler = diffusers_scheduler(name, timestep_spacing="trailing", **extra)
    scheduler.set_timesteps(61)
    assert float(scheduler.timesteps[-1]) == -1 and len(scheduler.timesteps) == EVALUATIONS_61[name, skip_prk][1]
    spec = get_sampler(name)
    options = spec.make_options(num_inference_steps=61, timestep_spacing="trailing", **extra)
    calls = []

    def model(x, t):
        calls.append(float(t))
        return torch.zeros_like(x)

    steps = list(spec.fn(model, torch.randn(1, 1, 4, 4), diffusion.NoiseSchedule.from_config(), options))
    assert len(steps) == 61 and steps[-1].t_prev < 0  # 61 steps, the last one to the data
    assert len(calls) == len(spec.timesteps(1000, options)) == EVALUATIONS_61[name, skip_prk][0]
    assert min(calls) >= 0 and min(calls) == 15


@pytest.mark.parametrize("name,step_kwargs", [("ddim", {"eta": 0.0}), ("ddim", {"eta": 1.0}), ("ddpm", {})])
def test_trailing_61_is_diffusers_without_its_extra_step(name, step_kwargs):
    """Our DDPM / DDIM at N = 61 trailing equal diffusers' first 61 steps, which end on the data; diffusers'
    62nd step, at t = -1, reads alphas_cumprod[-1] (the noisiest alpha-bar) and leaves a different image."""
    from conftest import TINY_PLAIN, random_diffusers_unet

    unet = random_diffusers_unet(TINY_PLAIN, std=0.05)

    def model(x, t):
        with torch.no_grad():
            return unet(x, torch.as_tensor(t)).sample

    scheduler = diffusers_scheduler(name, timestep_spacing="trailing")
    scheduler.set_timesteps(61)
    g = torch.Generator().manual_seed(3)
    x = x0 = torch.randn((2, 1, 8, 8), generator=g)
    states = []
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t), t, x, generator=g, **step_kwargs).prev_sample
        states.append(x)
    g = torch.Generator().manual_seed(3)
    torch.randn((2, 1, 8, 8), generator=g)
    spec = get_sampler(name)
    options = spec.make_options(num_inference_steps=61, timestep_spacing="trailing", **step_kwargs)
    ours = list(spec.fn(model, x0, diffusion.NoiseSchedule.from_config(), options, g))[-1].x_prev
    assert len(states) == 62
    assert (ours - states[60]).abs().max().item() <= 1e-4
    assert (ours - states[61]).abs().max().item() > 1e-2


# ----------------------------------------------------------------------------- the CLI

def run_cli(args: list[str], capsys) -> tuple[int, str]:
    try:
        code = cli.main(args)
    except SystemExit as e:  # argparse's errors
        code = e.code
    return code, capsys.readouterr().err


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*")) if folder.is_dir() else []


def unwritable_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    return folder


# (arguments, message, checked before the model is loaded). {out}: a fresh output path; {tmp}: the test's folder.
CLI_CASES = {
    "offset below 0": (
        ["--option", "steps_offset=-5"],
        "steps_offset must be a non-negative integer (every timestep must stay in 0..T-1)",
        False,
    ),
    "offset past T": (["--option", "steps_offset=1000"], "steps_offset must be between 0 and 999", False),
    "offset 10**21 as text": (
        ["--option", "steps_offset=10**21"],
        "steps_offset must be a whole number, got '10**21'",
        False,
    ),
    "offset 10**21": (["--option", f"steps_offset={10**21}"], "steps_offset must be between 0 and 999", False),
    "offset 2.5": (["--option", "steps_offset=2.5"], "steps_offset must be a whole number, got 2.5", False),
    "clip range nan": (
        ["--option", "clip_sample_range=nan"],
        "clip_sample_range must be a finite number, got nan",
        False,
    ),
    "clip range inf": (
        ["--option", "clip_sample_range=inf"],
        "clip_sample_range must be a finite number, got inf",
        False,
    ),
    "clip range -inf": (
        ["--option", "clip_sample_range=-inf"],
        "clip_sample_range must be a finite number, got -inf",
        False,
    ),
    "clip range 0": (["--option", "clip_sample_range=0"], "clip_sample_range must be positive", False),
    "clip range empty": (
        ["--option", "clip_sample_range="],
        "clip_sample_range must be a finite number, got ''",
        False,
    ),
    "clip through --option": (
        ["--option", "clip_sample=maybe"],
        "--option clip_sample=... has its own flag: use --clip",
        False,
    ),
    "steps through --option": (
        ["--option", "num_inference_steps=1e3"],  # --steps 1e3 is refused, so this one is too
        "--option num_inference_steps=... has its own flag: use --steps",
        False,
    ),
    "eta through --option": (["--option", "eta=0.5"], "--option eta=... has its own flag: use --eta", False),
    "option given twice": (
        ["--option", "steps_offset=1", "--option", "steps-offset=2"],
        "--option steps_offset is given twice; give each option once",
        False,
    ),
    "eta nan": (["--eta", "nan"], "eta must be a finite number, got nan", False),
    "eta 1e400": (["--eta", "1e400"], "eta must be a finite number, got inf", False),
    "eta negative": (["--eta", "-0.5"], "eta must be between 0 and 1", False),
    "spacing through --option": (
        ["--option", "timestep_spacing=5"],
        "--option timestep_spacing=... has its own flag: use --spacing",
        False,
    ),
    "spacing not a choice": (["--spacing", "5"], "argument --spacing: invalid choice: '5'", True),
    "option without =": (["--option", "steps_offset"], "--option wants KEY=VALUE, got 'steps_offset'", False),
    "unknown option": (["--option", "etta=0.5"], "Sampler 'ddim' has no option 'etta'", False),
    "steps past T": (["--steps", "5000"], "between 1 and 1000", False),
    "steps 0": (["--steps", "0"], "argument --steps: 0 is out of range: give at least 1", True),
    "steps not a number": (["--steps", "many"], "argument --steps: 'many' is not a whole number", True),
    "seed 2**53": (  # the studio's range too (what a browser's number holds exactly)
        ["--seed", str(2**53)],
        "argument --seed: 9007199254740992 is out of range: give 0 to 9007199254740991",
        True,
    ),
    "seed negative": (["--seed", "-1"], "argument --seed: -1 is out of range", True),
    "seed 1.5": (["--seed", "1.5"], "argument --seed: '1.5' is not a whole number", True),
    "batch size -1": (["--batch-size", "-1"], "argument --batch-size: -1 is out of range: give at least 1", True),
    "batch size 0": (["--batch-size", "0"], "argument --batch-size: 0 is out of range", True),
    "no images": (["-n", "0"], "argument -n/--num-images: 0 is out of range", True),
    "process frames 0": (["--process-frames", "0"], "argument --process-frames: 0 is out of range", True),
    "device bogus": (
        ["--device", "bogus"],
        "argument --device: 'bogus' is not a device; use cpu, cuda, cuda:N or mps",
        True,
    ),
    "device meta": (["--device", "meta"], "argument --device: 'meta': sampling runs on cpu, cuda[:N] or mps", True),
    "device cuda:99": (["--device", "cuda:99"], "argument --device: 'cuda:99'", True),
    "out is a folder": (["--out", "{tmp}"], "is a folder; give a file name, e.g.", True),
    "out under a file": (["--out", "{tmp}/a-file/x.png"], "a-file is a file, not a folder", True),
    "out under /etc/hostname": (
        ["--out", "/etc/hostname/x.png"],
        "Cannot write /etc/hostname/x.png: /etc/hostname is a file, not a folder",
        True,
    ),
    "out in /proc": (["--out", "/proc/x.png"], "no file can be created in /proc", True),
    "out name too long": (
        ["--out", "{tmp}/" + "x" * 300 + ".png"],
        "is 304 bytes long, more than the 255 a file system allows; choose a shorter one",
        True,
    ),
    "process under a file": (["--process", "{tmp}/a-file/p.png"], "a-file is a file, not a folder", True),
    "process same as out": (["--process", "{out}"], "--process and --out name the same file", True),
    "model 10,000 characters": (
        ["--model", "m" * 10_000],
        "(10,000 characters) is neither a model folder nor a Hub repo id",
        False,
    ),
    "model empty": (["--model", ""], "No model given", False),
    "model is a file": (["--model", "{tmp}/a-file"], "is a file; pass the model folder", False),
}
if torch.cuda.is_available():
    CLI_CASES.pop("device cuda:99")
else:
    CLI_CASES["device cuda"] = (
        ["--device", "cuda"],
        "argument --device: 'cuda': CUDA is not available on this machine",
        True,
    )
if not ROOT_USER:
    CLI_CASES["out in a read-only folder"] = (["--out", "{ro}/x.png"], "Permission denied", True)
    CLI_CASES["out a read-only file"] = (
        ["--out", "{special}/read-only.png"], "read-only.png is read-only; make it writable (chmod u+w)", True
    )
CLI_CASES.update({  # targets that are not regular files, made in a temp folder by special_files()
    "out a FIFO": (["--out", "{special}/fifo"], "fifo is a named pipe (FIFO), not a regular file", True),
    "out a socket": (["--out", "{special}/socket"], "socket is a socket, not a regular file", True),
    "out a symlink to a FIFO": (["--out", "{special}/link-to-fifo"], "fifo is a named pipe (FIFO)", True),
    "out a symlink to a folder": (["--out", "{special}/link-to-folder"], "is a folder; give a file name", True),
    "out a symlink loop": (["--out", "{special}/loop-a"], "Too many levels of symbolic links", True),
    "process a FIFO": (["--process", "{special}/fifo"], "is a named pipe (FIFO), not a regular file", True),
    "out 256-byte name": (["--out", "{tmp}/" + "é" * 126 + ".png"], "is 256 bytes long, more than the 255", True),
    "out folder name too long": (["--out", "{tmp}/" + "d" * 256 + "/x.png"], "File name too long", True),
})
if ROOT_USER:  # mknod needs root: a character device like /dev/full, made in the temp folder
    CLI_CASES["out a device"] = (["--out", "{special}/full"], "full is a device, not a regular file", True)
    CLI_CASES["out a symlink to a device"] = (["--out", "{special}/link-to-full"], "full is a device", True)


def special_files(folder: Path) -> dict[str, str]:
    """A FIFO, a socket, a device node (root only), symlinks to them, a loop, a read-only file: the kinds of
    target a write must not replace. Returns each name's kind, to check that nothing was replaced."""
    import socket

    folder.mkdir()
    os.mkfifo(folder / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(folder / "socket"))
    sock.close()
    if ROOT_USER:
        os.mknod(folder / "full", stat.S_IFCHR | 0o666, os.makedev(1, 7))
        os.symlink(folder / "full", folder / "link-to-full")
    os.symlink(folder / "fifo", folder / "link-to-fifo")
    os.symlink(folder, folder / "link-to-folder")
    os.symlink(folder / "loop-b", folder / "loop-a")
    os.symlink(folder / "loop-a", folder / "loop-b")
    (folder / "read-only.png").write_bytes(b"keep")
    (folder / "read-only.png").chmod(0o444)
    return kinds(folder)


def kinds(folder: Path) -> dict[str, str]:
    return {p.name: f"{stat.S_IFMT(p.lstat().st_mode):o}" for p in folder.iterdir()}


@pytest.mark.parametrize("case", CLI_CASES, ids=list(CLI_CASES))
def test_cli_refuses_bad_input_in_one_line(case, tmp_path, capsys, monkeypatch):
    args, message, before_load = CLI_CASES[case]
    (tmp_path / "a-file").write_text("not a folder")
    out_dir = tmp_path / "out"
    out = out_dir / "grid.png"
    special = tmp_path / "special"
    fill = {"{tmp}": str(tmp_path), "{out}": str(out), "{special}": str(special)}
    if "{ro}" in " ".join(args):
        fill["{ro}"] = str(unwritable_folder(tmp_path))
    made = special_files(special)

    def expand(a: str) -> str:
        for k, v in fill.items():
            a = a.replace(k, v)
        return a

    def no_sampling(*a, **k):
        raise AssertionError("sampling started")

    monkeypatch.setattr(DiffusionPipeline, "denoise", no_sampling)
    if before_load:
        monkeypatch.setattr(cli, "load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("the model was loaded")))
    argv = ["--model", str(BUNDLED), "-n", "2", "--steps", "2", "--out", str(out), "--device", "cpu"]
    code, err = run_cli(argv + [expand(a) for a in args], capsys)
    assert code == 2, err
    assert err.startswith("error: ") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert leftovers(out_dir) == [] and sorted(
        p.name for p in tmp_path.iterdir() if p.name not in ("read-only", "special")
    ) == ["a-file"]
    assert kinds(special) == made and (special / "read-only.png").read_bytes() == b"keep"  # nothing replaced


def test_cli_still_samples_and_writes_with_the_umask(tmp_path, capsys):
    out = tmp_path / "new" / "grid.png"
    old = os.umask(0o022)
    try:
        code, err = run_cli(["--model", str(BUNDLED), "-n", "2", "--steps", "2", "--out", str(out), "--device", "cpu",
                             "--option", "steps_offset=1", "--option", "clip_sample_range=1.5"], capsys)
    finally:
        os.umask(old)
    assert code == 0, err
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert leftovers(tmp_path) == ["grid.png", "new"]


def test_cli_write_failure_after_sampling_is_one_line(tmp_path, capsys, monkeypatch):
    """A failure the pre-check cannot foresee (the disk fills up while saving) is still a message, not a traceback."""
    def full_disk(images, path, nrow=None):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(cli, "save_grid", full_disk)
    code, err = run_cli(
        ["--model", str(BUNDLED), "-n", "1", "--steps", "1", "--out", str(tmp_path / "x.png"), "--device", "cpu"],
        capsys,
    )
    assert code == 2 and err.splitlines()[-1] == f"error: No space left on device: {tmp_path / 'x.png'}"
    assert "Traceback" not in err and leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- atomic writes

@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_gives_the_mode_open_would(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "new.txt", lambda p: p.write_text("x"))
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    assert (
        stat.S_IMODE((tmp_path / "new.txt").stat().st_mode)
        == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
        == mode
    )


def test_atomic_write_keeps_an_existing_files_mode(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("old")
    path.chmod(0o640)
    atomic_write(path, lambda p: p.write_text("new"))
    assert path.read_text() == "new" and stat.S_IMODE(path.stat().st_mode) == 0o640
    assert leftovers(tmp_path) == ["log.csv"]


def test_cli_writes_through_a_symlink_and_takes_the_longest_name(tmp_path, capsys):
    """--out naming a symlink writes the file it points to (as open() does) and the link stays; a 255-byte name
    (the longest a file system takes) is written although the hidden temporary name is longer."""
    target = tmp_path / "real" / "grid.png"
    target.parent.mkdir()
    target.write_bytes(b"old")
    os.symlink(target, tmp_path / "link.png")
    os.symlink(tmp_path / "real" / "new.png", tmp_path / "dangling.png")  # its target is created
    longest = "x" + "é" * 125 + ".png"  # 255 bytes
    for out in ("link.png", "dangling.png", longest):
        code, err = run_cli(["--model", str(BUNDLED), "-n", "1", "--steps", "1", "--out", str(tmp_path / out),
                             "--device", "cpu"], capsys)
        assert code == 0, err
    assert (tmp_path / "link.png").is_symlink() and (tmp_path / "dangling.png").is_symlink()
    assert target.read_bytes()[:4] == b"\x89PNG" and (tmp_path / "real" / "new.png").read_bytes()[:4] == b"\x89PNG"
    assert len(os.fsencode(longest)) == 255 and (tmp_path / longest).stat().st_size > 0
    assert leftovers(tmp_path) == sorted(["dangling.png", "link.png", "real", longest, "grid.png", "new.png"])


@pytest.mark.skipif(not ROOT_USER, reason="only root may replace a read-only file (open() would too)")
def test_a_read_only_file_root_may_write_keeps_its_mode(tmp_path):
    path = tmp_path / "grid.png"
    path.write_text("old")
    path.chmod(0o444)
    assert check_writable(path) == path
    atomic_write(path, lambda p: p.write_text("new"))
    assert path.read_text() == "new" and stat.S_IMODE(path.stat().st_mode) == 0o444
    assert leftovers(tmp_path) == ["grid.png"]


def test_atomic_write_refuses_what_is_not_a_regular_file(tmp_path):
    """The writer itself (not only the CLI's pre-check) never renames over a FIFO, socket, device or folder."""
    made = special_files(tmp_path / "special")
    for name in ["fifo", "socket", "link-to-fifo", "link-to-folder", *(["full"] if ROOT_USER else [])]:
        with pytest.raises(ValueError, match="not a regular file|is a folder"):
            atomic_write(tmp_path / "special" / name, lambda p: p.write_text("x"))
    assert kinds(tmp_path / "special") == made


@pytest.mark.parametrize("what,make,message", [
    ("file", lambda t: t, "is a folder; give a file name"),
    ("file", lambda t: t / "a-file" / "x.png", "a-file is a file, not a folder"),
    ("folder", lambda t: t / "a-file", "is a file, not a folder; give a folder"),
    ("folder", lambda t: t / "a-file" / "deeper" / "run", "a-file is a file, not a folder"),
    ("folder", lambda t: Path("/proc/run"), "no file can be created in /proc"),
    ("file", lambda t: Path("/sys/x.png"), "no file can be created in /sys"),
    ("file", lambda t: t / ("y" * 300), "is 300 bytes long, more than the 255"),
])
def test_check_writable_refuses_what_cannot_be_written(tmp_path, what, make, message):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ValueError, match=message):
        check_writable(make(tmp_path), what)
    assert leftovers(tmp_path) == ["a-file"]  # the probe file is gone
    assert check_writable(tmp_path / "new" / "deeper" / "x.png") and not (tmp_path / "new").exists()


@pytest.mark.skipif(ROOT_USER, reason="root writes into read-only folders (the /proc and under-a-file cases stand in)")
def test_check_writable_refuses_a_read_only_folder(tmp_path):
    with pytest.raises(ValueError, match="Permission denied"):
        check_writable(unwritable_folder(tmp_path) / "x.png")


# ----------------------------------------------------------------------------- the loader

def bundled_copy(tmp_path: Path) -> Path:
    model = tmp_path / "model"
    shutil.copytree(BUNDLED, model)
    return model


@pytest.mark.parametrize(
    "file,message",
    [
        (
            "unet/diffusion_pytorch_model.safetensors",
            "is a Git LFS pointer, not the weights: fetch the real files with `git lfs pull`",
        ),
        (
            "unet/diffusion_pytorch_model.bin",
            "is a Git LFS pointer, not the weights: fetch the real files with `git lfs pull`",
        ),
        ("unet/config.json", "is a Git LFS pointer, not the file: fetch the real files with `git lfs pull`"),
        ("scheduler/scheduler_config.json", "is a Git LFS pointer, not the file"),
    ],
)
def test_git_lfs_pointers_are_named(tmp_path, file, message):
    model = bundled_copy(tmp_path)
    if file.endswith(".bin"):
        (model / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    (model / file).write_bytes(LFS_POINTER)
    with pytest.raises(CheckpointError) as e:
        diffusion.load(model)
    assert message in str(e.value) and str(model / file) in str(e.value)


@pytest.mark.parametrize(
    "source,message",
    [
        ("m" * 10_000, "(10,000 characters) is neither a model folder nor a Hub repo id (File name too long)"),
        ("owner/" + "n" * 5_000, "(5,006 characters) is neither a model folder nor a Hub repo id (File name too long)"),
        ("owner/" + "n" * 200, "is neither a local folder nor a valid Hub repo id"),
        ("", "No model given"),
        ("   ", "No model given"),
        ("bad\x00name", "is neither a local folder nor a valid Hub repo id"),
        ("two\nlines/x", "is neither a local folder nor a valid Hub repo id"),
        ("./two\nlines", "No model folder at ./two\\nlines"),
    ],
    ids=[
        "10,000 characters",
        "a 5,000-character name",
        "a 200-character repo name",
        "empty",
        "blank",
        "a NUL",
        "a newline in an id",
        "a newline in a path",
    ],
)
def test_unusable_model_names_are_short_messages(source, message):
    with pytest.raises(CheckpointError) as e:
        diffusion.load(source)
    assert message in str(e.value) and len(str(e.value)) < 600 and str(e.value).isprintable()


def test_weights_that_are_not_weights(tmp_path):
    model = bundled_copy(tmp_path)
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    for content, message in [(b"", "damaged or incomplete"), (b"\xff" * 64, "damaged or incomplete")]:
        weights.write_bytes(content)
        with pytest.raises(CheckpointError, match=message):
            diffusion.load(model)
    (model / "unet" / "config.json").write_bytes(b"\xff\xfe not text")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        diffusion.load(model)


# ----------------------------------------------------------------------------- training

def training_config(tmp_path: Path, **values) -> Path:
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    from PIL import Image

    for i in range(8):
        Image.fromarray(np.full((16, 16), 30 * i, dtype=np.uint8), mode="L").save(images / f"{i}.png")
    config = {
        "dataset": "folder",
        "data_root": str(images),
        "image_size": 16,
        "channels": 1,
        "steps": 1,
        "batch_size": 8,
        "sample_every": 0,
        "ckpt_every": 1,
        "log_every": 1,
        "run_dir": str(tmp_path / "run"),
        "unet": {
            "block_out_channels": [16, 16],
            "down_block_types": ["DownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "UpBlock2D"],
            "layers_per_block": 1,
            "norm_num_groups": 8,
        },
        **values,
    }
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(config))
    return path


# (overrides, message). {tmp}: the test's folder, which holds a-file.
TRAINING_CASES = {
    "fashion-mnist, data_root missing": (
        ["--dataset=fashion-mnist", "--image_size=28", "--data_root={tmp}/no-such-folder"],
        "data_root='{tmp}/no-such-folder' is not a folder",
    ),
    "fashion-mnist, data_root a file": (
        ["--dataset=fashion-mnist", "--image_size=28", "--data_root={tmp}/a-file"],
        "is not a folder",
    ),
    "fashion-mnist, data_root empty": (
        ["--dataset=fashion-mnist", "--image_size=28", "--data_root={tmp}/empty"],
        "fashion-mnist is not in {tmp}/empty",
    ),
    "mnist, data_root missing": (
        ["--dataset=mnist", "--image_size=28", "--data_root={tmp}/nope"],
        "data_root='{tmp}/nope' is not a folder",
    ),
    "run_dir under a file": (
        ["--run_dir={tmp}/a-file/run"],
        "run_dir='{tmp}/a-file/run': Cannot write {tmp}/a-file/run: {tmp}/a-file is a file, not a folder",
    ),
    "run_dir is a file": (["--run_dir={tmp}/a-file"], "run_dir='{tmp}/a-file': {tmp}/a-file is a file, not a folder"),
    "run_dir in /proc": (
        ["--run_dir=/proc/run"],
        "run_dir='/proc/run': Cannot write /proc/run: no file can be created in /proc",
    ),
    "export_dir in /proc": (
        ["--export_dir=/proc/export"],
        "export_dir='/proc/export': Cannot write /proc/export: no file can be created in /proc",
    ),
    "export_dir under a file": (["--export_dir={tmp}/a-file/export"], "export_dir='{tmp}/a-file/export'"),
    "export only, export_dir under a file": (
        ["--export", "--export_dir={tmp}/a-file/export"],
        "export_dir='{tmp}/a-file/export'",
    ),
    "sample_steps past T": (
        ["--sample_steps=2000", "--sample_every=1"],
        "sample_steps: The number of steps must be between 1 and 1000",
    ),
    "sample_steps past a small T": (
        ["--num_train_timesteps=10", "--sample_steps=50"],
        "sample_steps: The number of steps must be between 1 and 10",
    ),
    "norm_num_groups 0": (
        ["--unet.norm_num_groups=0"],
        "the UNet cannot be built: norm_num_groups must be a whole number of at least 1, got 0",
    ),
    "attention_head_dim 0": (
        ["--unet.attention_head_dim=0"], "attention_head_dim must be a whole number of at least 1"
    ),
    "norm_num_groups text": (["--unet.norm_num_groups=\"8\""], "norm_num_groups must be a whole number of at least 1"),
    "block_out_channels empty": (["--unet.block_out_channels=[]"], "block_out_channels is empty"),
    "norm_eps 0": (["--unet.norm_eps=0"], "norm_eps must be a small positive number"),
    "config file a JSON list": (["{list}"], "holds a JSON list; it should hold one object of settings"),
    "config file not JSON": (["{broken}"], "is not valid JSON"),
}
if not ROOT_USER:
    TRAINING_CASES["run_dir read-only"] = (["--run_dir={ro}/run"], "Permission denied")


@pytest.mark.parametrize("case", TRAINING_CASES, ids=list(TRAINING_CASES))
def test_training_refuses_bad_paths_before_step_one(case, tmp_path, monkeypatch, capsys):
    from training import train as train_module

    overrides, message = TRAINING_CASES[case]
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "broken.json").write_text("{'lr': 1}")
    fill = {"{tmp}": str(tmp_path)}
    if any("{ro}" in o for o in overrides):
        fill["{ro}"] = str(unwritable_folder(tmp_path))

    def expand(text: str) -> str:
        for k, v in fill.items():
            text = text.replace(k, v)
        return text

    monkeypatch.setattr(train_module, "diffusion_loss", lambda *a, **k: pytest.fail("training started"))
    before = sorted(p.name for p in tmp_path.iterdir())
    config = str(training_config(tmp_path))
    if overrides[0] in ("{list}", "{broken}"):  # the config file itself
        config, overrides = str(tmp_path / f"{overrides[0][1:-1]}.json"), overrides[1:]
    assert train_module.main([config, *[expand(o) for o in overrides]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expand(message) in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists() and (tmp_path / "a-file").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before + ["images", "tiny.json"])


@pytest.mark.parametrize("precision,advice", [
    ("fp32", "the run diverged; lower lr (it is 1e+30; 1e-4 to 2e-4 suit these models)."),
    ("bf16", "the run diverged; lower lr (it is 1e+30; 1e-4 to 2e-4 suit these models) or use precision=fp32."),
])
def test_a_diverging_run_is_one_line_and_leaves_no_run_folder(tmp_path, capsys, precision, advice):
    """lr=1e30: the loss turns non-finite within a few steps; the message fits the config (no "use fp32" when
    fp32 is set), and the run folder this run made is removed, since it holds no checkpoint."""
    from training import train as train_module

    config = training_config(tmp_path)
    argv = [str(config), "--lr=1e30", "--steps=20", "--ckpt_every=50", f"--precision={precision}", "--grad_clip=1"]
    assert train_module.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: The loss became ") and err.endswith(advice), err
    assert not (tmp_path / "run").exists()
    (tmp_path / "run").mkdir()  # a folder that was there before the run is left as it was
    (tmp_path / "run" / "notes.txt").write_text("mine")
    assert train_module.main(argv) == 2
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


@pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed",
)
def test_default_data_root_still_uses_debians_fashion_mnist(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./data here
    assert load_images("fashion-mnist", "data", "test").shape == (10_000, 1, 28, 28)
    (tmp_path / "mine").mkdir()
    # The folder given, not Debian's copy.
    with pytest.raises(FileNotFoundError, match="fashion-mnist is not in .*mine"):
        load_images("fashion-mnist", str(tmp_path / "mine"), "test")


# ----------------------------------------------------------------------------- the studio's environment settings

CORES = "a whole number from 1 to {cores} (the cores this process may use)"
ENV_CASES = {  # variable, value, the range the message states
    "cores-text": ("CPU_CORES", "abc", CORES),
    "cores-inf": ("CPU_CORES", "inf", CORES),
    "cores-zero": ("CPU_CORES", "0", CORES),
    "cores-negative": ("CPU_CORES", "-1", CORES),
    "cores-more-than-the-machine": ("CPU_CORES", "1e9", CORES),
    "cores-fraction": ("CPU_CORES", "1.5", CORES),
    "work-text": ("MAX_WORK", "abc", "a whole number from 1,000 to 1,000,000,000,000 pixel-steps"),
    "work-zero": ("MAX_WORK", "0", "a whole number from 1,000 to 1,000,000,000,000 pixel-steps"),
    "work-nan": ("MAX_WORK", "nan", "a whole number from 1,000 to 1,000,000,000,000 pixel-steps"),
    "keep-overflow": ("KEEP_OUTPUTS", "1e400", "a whole number from 1 to 10,000"),
    "keep-negative": ("KEEP_OUTPUTS", "-3", "a whole number from 1 to 10,000"),
    "models-zero": ("MAX_MODELS", "0", "a whole number from 1 to 32"),
    "queue-huge": ("QUEUE_SIZE", "1e12", "a whole number from 1 to 10,000"),
    "preview-zero": ("PREVIEW_EVERY", "0", "a finite number from 0.05 to 60 seconds"),
    "preview-inf": ("PREVIEW_EVERY", "inf", "a finite number from 0.05 to 60 seconds"),
}


@pytest.mark.parametrize("case", ENV_CASES, ids=list(ENV_CASES))
def test_studio_refuses_bad_environment_settings_at_start_in_one_line(case, monkeypatch, capsys):
    """``python app.py`` reads its settings before anything starts: a bad value is one line naming the
    variable and the range it accepts (cores: at most the machine's), exit status 2, no traceback."""
    import studio.main
    from diffusion.machine import cpu_cores

    monkeypatch.delenv("CPU_CORES", raising=False)
    cores = cpu_cores()
    name, value, accepted = ENV_CASES[case]
    monkeypatch.setenv(name, value)
    monkeypatch.setattr(studio.main, "build_app", lambda *a: pytest.fail("the app was built"))
    with pytest.raises(SystemExit) as exit_info:
        studio.main.main([])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == f"python app.py: {name} must be {accepted.format(cores=cores)}, got {value!r}.\n"


def test_good_environment_settings_are_read(monkeypatch):
    from diffusion.machine import cpu_cores
    from studio.settings import Settings

    monkeypatch.setenv("CPU_CORES", "1")
    monkeypatch.setenv("MAX_WORK", "2e6")
    monkeypatch.setenv("PREVIEW_EVERY", "0.25")
    monkeypatch.setenv("KEEP_OUTPUTS", " 12 ")
    s = Settings.from_env()
    assert (cpu_cores(), s.max_work, s.preview_every_s, s.keep_outputs) == (1, 2_000_000, 0.25, 12)


# ----------------------------------------------------------------------------- noise, counts and non-finite samples

def tiny_pipe(nan: bool = False) -> DiffusionPipeline:
    from conftest import TINY_16

    torch.manual_seed(0)
    pipe = DiffusionPipeline(diffusion.UNet(diffusion.UNetConfig(**TINY_16)), {})
    if nan:
        with torch.no_grad():
            pipe.unet.conv_out.bias.fill_(float("nan"))
    return pipe


NOISE_CASES = {  # noise, the message
    "nan": (torch.full((2, 1, 8, 8), float("nan")), "The starting noise contains NaN or infinite values."),
    "inf": (torch.full((2, 1, 8, 8), float("inf")), "The starting noise contains NaN or infinite values."),
    "huge": (torch.full((2, 1, 8, 8), 1e30), "The starting noise reaches 1e+30; x_T is standard normal noise"),
    "empty": (torch.zeros(0, 1, 8, 8), "The starting noise has shape (0, 1, 8, 8); this model takes (n, 1, 8, 8), n"),
    "numpy": (np.zeros((2, 1, 8, 8), np.float32), "The starting noise must be a torch.Tensor, got ndarray."),
    "integers": (torch.zeros(2, 1, 8, 8, dtype=torch.long), "The starting noise must be floats, got torch.int64."),
    "channels": (torch.zeros(2, 3, 8, 8), "The starting noise has 3 channel(s); this model takes 1 ((n, 1, 8, 8))."),
    "size": (torch.zeros(2, 1, 9, 9), "The starting noise is 9x9; this model takes (n, 1, 8, 8)."),
}


@pytest.mark.parametrize("case", NOISE_CASES, ids=list(NOISE_CASES))
@pytest.mark.parametrize("call", ["sample", "denoise"])
def test_starting_noise_is_checked_before_any_step(case, call, monkeypatch):
    pipe = tiny_pipe()
    monkeypatch.setattr(pipe, "model_fn", lambda: pytest.fail("the model was called"))
    noise, message = NOISE_CASES[case]
    with pytest.raises(ValueError) as e:
        if call == "sample":
            pipe.sample("ddim", noise=noise, num_inference_steps=2)
        else:
            next(pipe.denoise("ddim", noise=noise, num_inference_steps=2))
    assert str(e.value).startswith(message), str(e.value)


@pytest.mark.parametrize("kwargs,message", [
    ({"n": 2.5}, "The number of images must be a whole number, got 2.5."),
    ({"n": 0}, "The number of images must be at least 1, got 0."),
    ({"n": True}, "The number of images must be at least 1, got True."),
    ({"n": "3"}, "The number of images must be a whole number, got '3'."),
    ({"n": 2, "batch_size": -1}, "The batch size must be at least 1, got -1."),
    ({"n": 2, "batch_size": 1.5}, "The batch size must be a whole number, got 1.5."),
])
def test_counts_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=f"^{message.replace('(', '[(]').replace(')', '[)]')}$"):
        tiny_pipe().sample("ddim", num_inference_steps=2, **kwargs)
    assert tiny_pipe().sample("ddim", n=np.int64(2), num_inference_steps=2).shape == (2, 1, 8, 8)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_a_sample_that_turns_non_finite_stops_at_that_step(sampler):
    """A damaged checkpoint (NaN weights) stops every sampler at its first step with the reason, instead of
    returning an all-black grid."""
    pipe = tiny_pipe(nan=True)
    with pytest.raises(ValueError, match=r"^The sample turned NaN or infinite at step 1 of 4 \(t = \d+\): the model"):
        pipe.sample(sampler, n=2, num_inference_steps=4)


def test_inversion_that_turns_non_finite_stops():
    with pytest.raises(ValueError, match="turned NaN or infinite at step 1 of 2"):
        tiny_pipe(nan=True).invert(torch.rand(2, 1, 8, 8), 2)


def test_cli_on_a_nan_checkpoint_is_one_line_and_writes_nothing(tmp_path, capsys):
    model = tmp_path / "nan-model"
    tiny_pipe(nan=True).save_pretrained(model)
    out = tmp_path / "out" / "grid.png"
    argv = ["--model", str(model), "-n", "2", "--steps", "3", "--out", str(out), "--device", "cpu"]
    code, err = run_cli(argv, capsys)
    last = err.strip().splitlines()[-1]  # after the progress bar, which had started
    assert code == 2 and last.startswith("error: The sample turned NaN or infinite at step 1 of 3"), err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists() or leftovers(tmp_path / "out") == []


@pytest.mark.parametrize("mode,args,message", [
    ("interpolate", ["--frames", "50", "--seed-b", "1"], "error: out of memory on cpu for 50 frames at once; lower"),
    ("sample", ["-n", "8", "--batch-size", "4"], "error: out of memory on cpu for 8 images (4 at once); lower -n or"),
])
def test_cli_out_of_memory_names_the_setting_that_sized_it(mode, args, message, tmp_path, capsys, monkeypatch):
    def oom(*a, **k):
        raise MemoryError

    monkeypatch.setattr(cli, f"_{mode}", oom)
    out = str(tmp_path / "o.png")
    argv = ["--model", str(BUNDLED), "--mode", mode, "--steps", "2", "--out", out, "--device", "cpu"]
    code, err = run_cli(argv + args, capsys)
    assert code == 2 and err.startswith(message) and err.count("\n") == 1, err
