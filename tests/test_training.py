"""training/train.py on tiny synthetic images: the loss goes down, an interrupted run (stopped, or
killed) resumes bit-identically, torchrun trains on CPU (gloo), damaged checkpoints are skipped and
nothing is left half-written, bad configs fail before any work, and the export loads in diffusion
and in diffusers.

Kept small for 2 CPU cores: a 16x16 UNet with 16 channels, 8 images a batch, one thread.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion.files import TEMP_NAME, atomic_write
from diffusion.unet import UNet
from training.config import resolve_config
from training.data import load_images
from training.objective import lr_factor
from training.train import main, newest_valid_checkpoint, read_checkpoint, train

ROOT = Path(__file__).resolve().parents[1]
TINY_UNET = {"block_out_channels": [16, 16], "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
             "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "layers_per_block": 1, "norm_num_groups": 8}
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


# ----------------------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """64 grayscale PNGs of white discs and squares on black; a few 20x24 ones to be resized and cropped."""
    root = tmp_path_factory.mktemp("shapes")
    rng = np.random.default_rng(0)
    for i in range(64):
        h, w = (24, 20) if i % 16 == 0 else (16, 16)
        yy, xx = np.mgrid[:h, :w]
        r = int(rng.integers(3, 7))
        cy, cx = int(rng.integers(r, h - r)), int(rng.integers(r, w - r))
        shape = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r if i % 2 else (abs(yy - cy) < r) & (abs(xx - cx) < r)
        folder = root / ("discs" if i % 2 else "squares")
        folder.mkdir(exist_ok=True)
        Image.fromarray((shape * 255).astype(np.uint8), mode="L").save(folder / f"{i:03d}.png")
    return root


def settings(images: Path, run_dir: Path, **overrides) -> dict:
    """A tiny run that exercises every source of randomness (dropout, flips, t, noise)."""
    return {"dataset": "folder", "data_root": str(images), "image_size": 16, "channels": 1, "unet": TINY_UNET,
            "dropout": 0.1, "random_flip": True, "steps": 6, "batch_size": 8, "lr": 2e-3, "warmup_steps": 2,
            "ema_decay": 0.9, "log_every": 1, "sample_every": 0, "ckpt_every": 2, "keep_checkpoints": 10,
            "deterministic": True, "run_dir": str(run_dir), **overrides}


def as_args(values: dict) -> list[str]:
    return [f"--{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in values.items()]


def tiny_config(images: Path, run_dir: Path, **overrides):
    return resolve_config(None, as_args(settings(images, run_dir, **overrides)))


def ckpt(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:08d}.pt"


def losses(run_dir: Path) -> list[tuple[int, float]]:
    with (run_dir / "log.csv").open() as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


def assert_identical(a, b, where: str = "checkpoint") -> None:
    """Bit-identical nested state (tensors, dicts, lists, numbers)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where} keys differ"
        for k in a:
            assert_identical(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where} lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_training_state(a: dict, b: dict) -> None:
    for key in ("step", "model", "ema", "optimizer", "scheduler", "rng"):
        assert_identical(a[key], b[key], key)


def no_temp_files(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.rglob("*") if TEMP_NAME.fullmatch(p.name)]


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """One thread (the same as the subprocesses: bit-identity across them) and no leaked global state."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # train() sets it for deterministic runs
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(False)


# ----------------------------------------------------------------------------- learning

def test_a_few_steps_reduce_the_loss(images, tmp_path):
    cfg = tiny_config(images, tmp_path / "run", steps=40, dropout=0.0, random_flip=False, warmup_steps=0,
                      log_every=5, ckpt_every=40, deterministic=False)
    # the same weights train() starts from, and a fixed evaluation batch: every image at 4 noise levels
    torch.manual_seed(cfg.seed)
    initial = UNet(cfg.unet_config()).eval()
    x0 = load_images("folder", str(images), image_size=16, channels=1).float() / 127.5 - 1
    x0 = x0.repeat(4, 1, 1, 1)
    t = torch.tensor([50, 250, 500, 750]).repeat_interleave(len(x0) // 4)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))

    def eval_loss(model) -> float:
        from diffusion.schedule import NoiseSchedule

        schedule = NoiseSchedule.from_config(cfg.beta_schedule, cfg.num_train_timesteps, cfg.beta_start, cfg.beta_end)
        with torch.no_grad():
            return torch.nn.functional.mse_loss(model.eval()(schedule.q_sample(x0, t, noise), t), noise).item()

    out = train(cfg)
    before, after, ema_after = eval_loss(initial), eval_loss(out["model"]), eval_loss(out["ema"])
    assert after < 0.5 * before, (before, after)
    assert ema_after < 0.8 * before, (before, ema_after)
    logged = losses(tmp_path / "run")
    assert [s for s, _ in logged] == list(range(5, 41, 5))
    assert all(math.isfinite(v) for _, v in logged)
    assert np.mean([v for _, v in logged[-3:]]) < 0.6 * logged[0][1], logged


# ----------------------------------------------------------------------------- resume

def test_stopped_and_resumed_run_is_bit_identical(images, tmp_path, capsys):
    straight = train(tiny_config(images, tmp_path / "straight", steps=6))
    train(tiny_config(images, tmp_path / "resumed", steps=3))  # checkpoints at 2 and 3 (the last step)
    capsys.readouterr()
    resumed = train(tiny_config(images, tmp_path / "resumed", steps=6))
    assert f"resumed from {ckpt(tmp_path / 'resumed', 3)} at step 3" in capsys.readouterr().out

    assert_same_training_state(
        read_checkpoint(ckpt(tmp_path / "straight", 6)), read_checkpoint(ckpt(tmp_path / "resumed", 6))
    )
    assert_identical(straight["model"].state_dict(), resumed["model"].state_dict(), "model")
    assert_identical(straight["ema"].state_dict(), resumed["ema"].state_dict(), "ema")
    assert losses(tmp_path / "straight") == losses(tmp_path / "resumed")  # the log is continued, not restarted
    assert len(losses(tmp_path / "resumed")) == 6


def test_killed_cli_run_resumes_from_its_newest_checkpoint(images, tmp_path, capsys):
    """SIGKILL a real `python -m training.train CONFIG` mid-run, resume, and match an uninterrupted run."""
    killed = tmp_path / "killed"
    config_file = tmp_path / "tiny.json"
    config_file.write_text(json.dumps(settings(images, killed, steps=10_000)))
    with (tmp_path / "out.txt").open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "training.train", str(config_file)], cwd=ROOT,
                                env=SUBPROCESS_ENV, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while not ckpt(killed, 2).exists():
                assert proc.poll() is None, (tmp_path / "out.txt").read_text()[-3000:]
                assert time.monotonic() < deadline, "no checkpoint after 120 s"
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    newest = int(max(killed.glob("checkpoints/step-*.pt")).stem.split("-")[1])
    # what a kill during torch.save leaves behind; atomic_write never lets it become a step-*.pt
    (killed / "checkpoints" / f".step-{newest + 2:08d}.pt.0a1b2c3d.tmp.pt").write_bytes(b"half a checkpoint")

    steps = newest + 3
    capsys.readouterr()
    train(tiny_config(images, killed, steps=steps))
    assert f"resumed from {ckpt(killed, newest)} at step {newest}" in capsys.readouterr().out
    train(tiny_config(images, tmp_path / "straight", steps=steps))
    assert_same_training_state(
        read_checkpoint(ckpt(tmp_path / "straight", steps)), read_checkpoint(ckpt(killed, steps))
    )
    assert losses(tmp_path / "straight") == losses(killed)
    assert no_temp_files(killed) == []


def torchrun(images: Path, run_dir: Path, steps: int) -> str:
    """`torchrun --nproc_per_node=2 -m training.train ...` on CPU (gloo); its stdout."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           "-m", "training.train", *as_args(settings(images, run_dir, steps=steps, deterministic=False))]
    proc = subprocess.run(cmd, cwd=ROOT, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_torchrun_two_cpu_processes_train_and_checkpoint(images, tmp_path, capsys):
    run_dir = tmp_path / "ddp"
    torchrun(images, run_dir, steps=4)
    state = read_checkpoint(ckpt(run_dir, 4))
    assert ckpt(run_dir, 2).exists() and state["step"] == 4
    assert len(state["rng"]) == 2 and not torch.equal(state["rng"][0]["cpu"], state["rng"][1]["cpu"])  # one per rank
    assert (
        state["config"]
        == resolve_config(None, as_args(settings(images, run_dir, steps=4, deterministic=False))).to_dict()
    )
    assert [s for s, _ in losses(run_dir)] == [1, 2, 3, 4] and all(math.isfinite(v) for _, v in losses(run_dir))
    assert (run_dir / "export" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert no_temp_files(run_dir) == []

    # a single process picks up where the two left off (rank 0's random state)
    capsys.readouterr()
    train(tiny_config(images, run_dir, steps=6, deterministic=False))
    assert f"resumed from {ckpt(run_dir, 4)} at step 4" in capsys.readouterr().out
    assert read_checkpoint(ckpt(run_dir, 6))["step"] == 6


@pytest.mark.skipif(
    not os.environ.get("SLOW_TESTS"), reason="two torchrun launches, ~70 s on 2 busy cores; set SLOW_TESTS=1"
)
def test_torchrun_resumes_under_torchrun(images, tmp_path):
    run_dir = tmp_path / "ddp"
    torchrun(images, run_dir, steps=2)
    out = torchrun(images, run_dir, steps=4)
    assert f"resumed from {ckpt(run_dir, 2)} at step 2" in out
    state = read_checkpoint(ckpt(run_dir, 4))
    assert state["step"] == 4 and len(state["rng"]) == 2
    assert [s for s, _ in losses(run_dir)] == [1, 2, 3, 4]
    assert no_temp_files(run_dir) == []


# ----------------------------------------------------------------------------- damaged checkpoints, atomic writes

def test_a_damaged_newest_checkpoint_is_skipped(images, tmp_path, capsys):
    run_dir = tmp_path / "run"
    train(tiny_config(images, run_dir, steps=4))
    good = read_checkpoint(ckpt(run_dir, 4))
    data = ckpt(run_dir, 4).read_bytes()

    for damage in (data[: len(data) // 2], b"", b"\x00garbage" * 100):
        ckpt(run_dir, 4).write_bytes(damage)
        with pytest.warns(UserWarning, match="Skipping damaged checkpoint .*step-00000004.pt"):
            path, state = newest_valid_checkpoint(run_dir)
        assert path == ckpt(run_dir, 2) and state["step"] == 2
    torch.save({"model": {}, "step": 4}, ckpt(run_dir, 4))  # loads, but is not a training checkpoint
    with pytest.warns(UserWarning, match="lacks config, ema, optimizer, rng, scheduler"):
        assert newest_valid_checkpoint(run_dir)[0] == ckpt(run_dir, 2)

    # training resumes from step 2 and writes step 4 again, as the first time
    capsys.readouterr()
    with pytest.warns(UserWarning, match="Skipping damaged checkpoint"):
        train(tiny_config(images, run_dir, steps=4))
    assert f"resumed from {ckpt(run_dir, 2)} at step 2" in capsys.readouterr().out
    assert_same_training_state(good, read_checkpoint(ckpt(run_dir, 4)))
    assert no_temp_files(run_dir) == []

    # a damaged checkpoint newer than the run's end never makes it prune the checkpoint it just wrote
    ckpt(run_dir, 8).write_bytes(b"truncated")
    with pytest.warns(UserWarning, match="Skipping damaged checkpoint .*step-00000008.pt"):
        train(tiny_config(images, run_dir, steps=6, keep_checkpoints=1))
    assert read_checkpoint(ckpt(run_dir, 6))["step"] == 6
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-00000006.pt", "step-00000008.pt"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path, error):
    target = tmp_path / "checkpoints" / "step-00000002.pt"
    atomic_write(target, lambda p: p.write_bytes(b"old, complete"))

    def half_then_fail(p: Path) -> None:
        p.write_bytes(b"new, half")
        raise error("disk full")

    with pytest.raises(error):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"old, complete"
    assert [p.name for p in target.parent.iterdir()] == [target.name]


# ----------------------------------------------------------------------------- config errors

BAD_CONFIGS = {
    "unknown dataset": (
        ["--dataset=imagenet"],
        "dataset='imagenet' is unknown; choose one of mnist, fashion-mnist, cifar10, folder",
    ),
    "negative lr": (["--lr=-1e-4"], "lr must be positive, got -0.0001"),
    "lr not a number": (["--lr=fast"], "lr must be a finite number, got 'fast'"),
    "steps not an integer": (["--steps=1.5"], "steps must be a whole number, got 1.5"),
    "bool not true/false": (["--random_flip=yes"], "random_flip must be true or false, got 'yes'"),
    "size the UNet cannot halve": (
        ["--image_size=15"],
        "sample_size 15 is not divisible by 2, the downsampling of 2 levels",
    ),
    "unknown key": (["--learning_rate=1e-4"], "Unknown config keys learning_rate"),
    "unknown UNet key": (["--unet.widths=[8]"], "unexpected keyword argument 'widths'"),
    "no value": (["--lr"], "Cannot read '--lr': overrides look like --key=value"),
    "no dashes": (["lr=1e-4"], "Cannot read 'lr=1e-4'"),
    "unknown lr schedule": (["--lr_schedule=linear"], "lr_schedule='linear' is not one of 'constant', 'cosine'"),
    "min_lr above lr": (["--lr=1e-4", "--min_lr=1e-3"], "min_lr must be between 0 and 0.0001 (at most lr), got 0.001"),
    "several problems at once": (
        ["--lr=0", "--beta_end=2", "--ema_decay=1"],
        "lr must be positive, got 0.0\n  - ema_decay must be in [0, 1), got 1.0\n  - need 0 < beta_start",
    ),
    "batch larger than the data": (
        ["--batch_size=128"],
        "The dataset has 64 images, fewer than one batch of 128 x 1 processes",
    ),
    "label drop out of range": (
        ["--class_conditional=true", "--cond_drop_prob=1"], "cond_drop_prob must be in [0, 1) (0.1 to 0.2 is usual)"
    ),
    "no null label for guidance": (
        ["--class_conditional=true", "--cond_drop_prob=0"], "cond_drop_prob=0 never trains the null label"
    ),
    "guidance out of range": (["--guidance_scale=50"], "guidance_scale must be between 0 and 20"),
    "missing image folder": (
        ["--data_root=/nonexistent/images"],
        "dataset=folder needs --data_root pointing at a folder of images",
    ),
}


@pytest.mark.parametrize("case", BAD_CONFIGS, ids=list(BAD_CONFIGS))
def test_bad_configs_fail_clearly_before_any_work(images, tmp_path, case, capsys):
    overrides, message = BAD_CONFIGS[case]
    config_file = tmp_path / "tiny.json"
    config_file.write_text(json.dumps(settings(images, tmp_path / "run")))
    assert main([str(config_file), *overrides]) == 2
    err = capsys.readouterr().err
    assert "\nerror: " in "\n" + err and message in err, err
    assert not (tmp_path / "run").exists()


def test_unknown_config_file_lists_the_known_ones(capsys):
    assert main(["fashion_mnist"]) == 2
    known = "cifar10, fashion-mnist, fashion-mnist-cond, mnist"
    assert f"No config file 'fashion_mnist'; give a path or one of: {known}" in capsys.readouterr().err


def test_shipped_configs_resolve():
    for name in ("fashion-mnist", "mnist", "cifar10"):
        cfg = resolve_config(name, ["--steps=5", "--unet.layers_per_block=1", "--lr=1"])
        assert (cfg.dataset, cfg.steps, cfg.unet["layers_per_block"], cfg.lr) == (name, 5, 1, 1.0)
        cfg.unet_config()
    cond = resolve_config("fashion-mnist-cond", [])  # the bundled class-conditional model's recipe
    assert cond.class_conditional and cond.init_from == "checkpoints/fashion-mnist" and cond.label_lr_scale == 20
    assert cond.unet_config().num_class_embeds == 11


# ----------------------------------------------------------------------------- export

def test_export_loads_in_diffusion_and_diffusers(images, tmp_path):
    from diffusers import DDPMPipeline, UNet2DModel

    import diffusion

    cfg = tiny_config(images, tmp_path / "run", steps=4)
    out = train(cfg)
    export = tmp_path / "run" / "export"
    assert json.loads((export / "training_config.json").read_text()) == {**cfg.to_dict(), "trained_steps": 4}
    for step in (2, 4):  # every checkpoint carries the whole resolved config
        assert read_checkpoint(ckpt(tmp_path / "run", step))["config"] == cfg.to_dict()

    ours = diffusion.load(export).unet.eval()
    assert_identical(ours.state_dict(), out["ema"].state_dict(), "exported EMA weights")
    theirs = UNet2DModel.from_pretrained(export, subfolder="unet").eval()
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 421, 999])
    with torch.no_grad():
        assert (ours(x, t) - theirs(x, t).sample).abs().max().item() <= 1e-5
    pipe = DDPMPipeline.from_pretrained(export)
    assert pipe.scheduler.config.num_train_timesteps == cfg.num_train_timesteps
    assert pipe.scheduler.config.prediction_type == cfg.prediction_type
    assert_identical(pipe.unet.state_dict(), theirs.state_dict(), "DDPMPipeline's UNet")

    # --export alone re-exports the newest checkpoint's EMA, elsewhere, without training
    again = tmp_path / "again"
    main([*as_args(settings(images, tmp_path / "run", steps=4)), "--export", f"--export_dir={again}"])
    assert_identical(diffusion.load(again).unet.state_dict(), ours.state_dict(), "--export weights")
    assert [s for s, _ in losses(tmp_path / "run")] == [1, 2, 3, 4]


# ----------------------------------------------------------------------------- learning-rate schedule

def test_lr_schedule_warms_up_then_holds_or_follows_a_half_cosine(images, tmp_path):
    """Warmup ramps to lr at step warmup_steps; constant holds it; cosine passes (lr + min_lr) / 2 half-way
    through the steps after warmup and reaches min_lr at the last; the optimiser follows lr_factor."""
    cfg = tiny_config(images, tmp_path / "run", steps=110, warmup_steps=10, lr=1e-3)
    assert [lr_factor(cfg, s) for s in (0, 4, 9, 10, 109)] == pytest.approx([1 / 11, 5 / 11, 10 / 11, 1.0, 1.0])
    cfg = tiny_config(images, tmp_path / "run", steps=110, warmup_steps=10, lr=1e-3, lr_schedule="cosine",
                      min_lr=1e-4)
    assert lr_factor(cfg, 9) == pytest.approx(10 / 11) and lr_factor(cfg, 10) == pytest.approx(1.0)
    assert lr_factor(cfg, 60) == pytest.approx(0.55)  # half-way: (1e-3 + 1e-4) / 2
    assert lr_factor(cfg, 110) == pytest.approx(0.1) and lr_factor(cfg, 500) == pytest.approx(0.1)
    factors = [lr_factor(cfg, s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(factors, factors[1:]))  # decays monotonically
    # A short run logs the optimiser's learning rate: warmup, then the cosine down to min_lr.
    run = tiny_config(images, tmp_path / "cos", steps=8, warmup_steps=2, lr=1e-3, lr_schedule="cosine", min_lr=0.0,
                      log_every=1, ckpt_every=8)
    train(run)
    logged = [float(r["lr"]) for r in csv.DictReader(open(tmp_path / "cos" / "log.csv"))]
    assert logged == pytest.approx([1e-3 * lr_factor(run, s) for s in range(1, 9)])
    assert logged[-1] == pytest.approx(0.0)


# ----------------------------------------------------------------------------- min-SNR weighting, init_from

@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
def test_min_snr_weights_equal_the_formula(images, tmp_path, prediction):
    """Hang et al. 2023: min(SNR, gamma) on the x0 error, i.e. /SNR for epsilon, x1 for x0, /(SNR + 1) for v."""
    from diffusion.schedule import NoiseSchedule
    from training.objective import loss_weights

    schedule = NoiseSchedule.from_config()
    t = torch.tensor([0, 10, 100, 250, 500, 999])
    abar = schedule.alphas_cumprod[t]
    snr = abar / (1 - abar)
    gamma = 5.0
    expected = {
        "epsilon": torch.minimum(snr, torch.tensor(gamma)) / snr,
        "sample": torch.minimum(snr, torch.tensor(gamma)),
        "v_prediction": torch.minimum(snr, torch.tensor(gamma)) / (snr + 1),
    }[prediction]
    cfg = tiny_config(
        images, tmp_path / "run", prediction_type=prediction, loss_weighting="min_snr", min_snr_gamma=gamma
    )
    w = loss_weights(schedule, cfg, t)
    assert torch.allclose(w.double(), expected, rtol=1e-6)
    # Each gives the same weight to the x0 error:
    # ||x0_hat - x0||^2 = ||eps error||^2 / SNR = ||v error||^2 / (SNR + 1) ... x abar
    x0_weight = {"epsilon": w.double() * snr, "sample": w.double(), "v_prediction": w.double() * (snr + 1)}[prediction]
    assert torch.allclose(x0_weight, torch.minimum(snr, torch.tensor(gamma)), rtol=1e-6)
    assert loss_weights(schedule, tiny_config(images, tmp_path / "u", prediction_type=prediction), t) is None
    # and the weighted run trains
    out = train(
        tiny_config(
            images, tmp_path / "run", prediction_type=prediction, loss_weighting="min_snr", steps=2, ckpt_every=2
        )
    )
    assert all(math.isfinite(v) for _, v in losses(tmp_path / "run")) and out["step"] == 2


def test_init_from_loads_model_and_ema_and_refuses_another_architecture(images, tmp_path, capsys):
    import diffusion

    train(tiny_config(images, tmp_path / "first", steps=4))
    exported = tmp_path / "first" / "export"
    start = diffusion.load(exported).unet.state_dict()
    # steps=0 is refused, so run one step with lr ~ 0 and check both copies started from the export
    cfg = tiny_config(
        images, tmp_path / "second", steps=1, lr=1e-30, dropout=0.0, init_from=str(exported), ckpt_every=1
    )
    out = train(cfg)
    for name in ("model", "ema"):
        for key, value in out[name].state_dict().items():
            assert torch.allclose(value, start[key], atol=1e-6), f"{name}.{key} did not start from the export"
    state = read_checkpoint(ckpt(tmp_path / "second", 1))
    assert state["optimizer"]["state"][0]["step"].item() == 1  # a fresh optimizer, not the first run's
    assert state["config"]["init_from"] == str(exported)
    assert json.loads((tmp_path / "second" / "export" / "training_config.json").read_text())["init_from"] == str(
        exported
    )
    # another architecture: one clear message naming the difference, before any training
    capsys.readouterr()
    assert main(as_args(
        settings(images, tmp_path / "third", init_from=str(exported), unet={**TINY_UNET, "layers_per_block": 2})
    )) == 2
    err = capsys.readouterr().err
    assert "is another architecture" in err and "layers_per_block: 1 there, 2 here" in err
    assert not (tmp_path / "third").exists()
    assert main(as_args(settings(images, tmp_path / "fourth", init_from="/nonexistent/model"))) == 2
    assert "init_from='/nonexistent/model': No model folder" in capsys.readouterr().err


def test_model_card_counts_the_training_a_model_was_continued_from(images, tmp_path):
    from training import model_card

    train(tiny_config(images, tmp_path / "a", steps=2, ckpt_every=2))
    model_card.main(["--run", str(tmp_path / "a"), "--out", str(tmp_path / "model"), "--command", "first"])
    first = json.loads((tmp_path / "model" / "training_config.json").read_text())
    first_card = (tmp_path / "model" / "README.md").read_text()
    assert first["previous_training"]["images"] == 0 and first["wall_s"] > 0
    # continued in place, as the bundled model is: the card reads the old config before overwriting it
    train(
        tiny_config(
            images, tmp_path / "b", steps=3, ckpt_every=3, init_from=str(tmp_path / "model"), loss_weighting="min_snr",
            ema_warmup=False,
        )
    )
    section = tmp_path / "extra.md"
    section.write_text("## Measured\n\n| a | b |\n")
    model_card.main(["--run", str(tmp_path / "b"), "--out", str(tmp_path / "model"), "--command", "second",
                     "--section", str(section)])
    second = json.loads((tmp_path / "model" / "training_config.json").read_text())
    assert second["previous_training"] == {
        "source": str(tmp_path / "model"),
        "images": 2 * 8,
        "wall_s": first["wall_s"],
    }
    card = (tmp_path / "model" / "README.md").read_text()
    assert f"| in all | {(5 * 8) / 60000:.1f} epochs (40 images)" in card
    assert "min_snr weighting (gamma 5.0)" in card and "## Measured" in card and "fresh optimizer" in card
    assert "from the first step (no warmup)" in card and "with warmup" not in card
    assert "with warmup |" in first_card


def test_a_checkpoint_of_another_architecture_is_named_on_resume_and_export(images, tmp_path):
    """Resuming or exporting a run folder with a config of another UNet: one message naming the checkpoint and
    what to do instead, before any step (the run's files stay as they were)."""
    run_dir = tmp_path / "run"
    train(tiny_config(images, run_dir, steps=2))
    wider = {**TINY_UNET, "layers_per_block": TINY_UNET.get("layers_per_block", 1) + 1}
    other = tiny_config(images, run_dir, steps=4, unet=wider)
    with pytest.raises(ValueError, match=r"step-00000002\.pt was written for another model than this config "
                                         r"describes; resume with its own config \(saved in the checkpoint\)"):
        train(other)
    with pytest.raises(ValueError, match=r"was written for another model than this config describes; export with "
                                         r"its own config \(saved in the checkpoint\)\. \("):
        train(other, export_only=True)
    assert int(newest_valid_checkpoint(run_dir)[1]["step"]) == 2


# ----------------------------------------------------------------------------- class-conditional

def test_class_conditional_run_takes_labels_from_subfolders_and_exports_them(images, tmp_path):
    import diffusion
    from diffusion.classes import ClassInfo

    cfg = tiny_config(images, tmp_path / "cond", class_conditional=True, cond_drop_prob=0.5, guidance_scale=2.0,
                      steps=4, ckpt_every=4, sample_every=4, sample_steps=2)
    torch.manual_seed(cfg.seed)
    initial = UNet(cfg.unet_config()).class_embedding.weight.detach().clone()
    out = train(cfg)
    moved = (out["model"].class_embedding.weight - initial).abs().amax(1)
    assert (moved > 0).all(), moved  # both classes and the null label were trained
    pipe = diffusion.load(tmp_path / "cond" / "export")
    assert pipe.classes == ClassInfo(("discs", "squares"), 2, 2.0) and pipe.unet.config.num_class_embeds == 3
    assert pipe.sample("ddim", n=2, num_inference_steps=2, class_labels="squares").shape == (2, 1, 16, 16)
    grid = np.asarray(Image.open(tmp_path / "cond" / "samples" / "step-00000004.png"))
    assert grid.shape[0] < grid.shape[1]  # one row of 8 per class: 2 rows


def test_drop_labels_uses_the_null_label_at_the_asked_rate(images, tmp_path):
    from training.objective import drop_labels

    cfg = tiny_config(images, tmp_path / "run", class_conditional=True, cond_drop_prob=0.2)
    torch.manual_seed(0)
    dropped = drop_labels(cfg, torch.zeros(20_000, dtype=torch.long))
    assert set(dropped.unique().tolist()) == {0, 2}  # 2 classes: the null label is 2
    assert abs((dropped == 2).float().mean().item() - 0.2) < 0.015


def test_an_unconditional_model_starts_a_conditional_one_with_a_zero_label_table(images, tmp_path):
    import diffusion

    train(tiny_config(images, tmp_path / "plain", steps=2, ckpt_every=2))
    exported = tmp_path / "plain" / "export"
    cfg = tiny_config(images, tmp_path / "cond", class_conditional=True, init_from=str(exported), steps=1,
                      lr=1e-30, dropout=0.0, ckpt_every=1)
    ema = train(cfg)["ema"].eval()
    assert ema.class_embedding.weight.abs().max() < 1e-20
    plain = diffusion.load(exported).unet
    x, t = torch.randn(3, 1, 16, 16), torch.tensor([10, 500, 990])
    with torch.no_grad():
        for label in (0, 1, 2):  # step 0 is the unconditional model, whatever the label
            assert torch.allclose(ema(x, t, torch.full((3,), label)), plain(x, t), atol=1e-6)


def test_a_folder_without_class_subfolders_is_refused(images, tmp_path, capsys):
    assert main(as_args(settings(images / "discs", tmp_path / "run", class_conditional=True))) == 2
    assert "Class labels of a folder come from its subfolders, one per class" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_the_label_table_learns_at_its_own_rate(images, tmp_path):
    from training.train import Processes, build_state

    cfg = tiny_config(images, tmp_path / "run", class_conditional=True, label_lr_scale=10.0, lr=1e-3)
    state = build_state(cfg, Processes(False, 0, 1, torch.device("cpu")))
    rest, table = state.optimizer.param_groups
    assert table["params"] == [state.model.class_embedding.weight] and table["initial_lr"] == pytest.approx(1e-2)
    assert rest["initial_lr"] == 1e-3 and len(rest["params"]) == len(list(state.model.parameters())) - 1
    plain = build_state(tiny_config(images, tmp_path / "plain"), Processes(False, 0, 1, torch.device("cpu")))
    assert len(plain.optimizer.param_groups) == 1  # unconditional runs (and their checkpoints) are unchanged


def test_model_card_of_a_class_conditional_model(images, tmp_path):
    import diffusion
    from training import model_card

    train(tiny_config(images, tmp_path / "plain", steps=2, ckpt_every=2))
    train(tiny_config(images, tmp_path / "cond", steps=2, ckpt_every=2, class_conditional=True, guidance_scale=2.5,
                      label_lr_scale=20.0, init_from=str(tmp_path / "plain" / "export")))
    model_card.main(["--run", str(tmp_path / "cond"), "--out", str(tmp_path / "model"), "--command", "cond"])
    card = (tmp_path / "model" / "README.md").read_text()
    assert "# Class-conditional DDPM" in card and "pipeline_tag" not in card
    assert "2 classes and a null label; each label replaced by the null label with probability 0.1" in card
    assert "the label table at 20x the learning rate" in card and "--class-label all -n 8 --guidance-scale 2.5" in card
    assert diffusion.load(tmp_path / "model").classes.names == ("discs", "squares")
    grid = np.asarray(Image.open(tmp_path / "model" / "samples-ddim50-seed0.png"))
    assert grid.shape[0] < grid.shape[1]  # 2 rows of 8
