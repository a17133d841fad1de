"""Evaluation: the Frechet distance and Inception Score against references we did not write (scipy,
closed forms, torch-fidelity), the offline classifier metric end to end on tiny data, and refusals."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from diffusion import load
from training import classifier as clf
from training import eval_table, generation, scoring
from training import evaluate as ev
from training.metrics import (
    blank_fraction,
    feature_statistics,
    frechet_difference,
    frechet_distance,
    inception_score,
    precision_recall,
)

from conftest import SMALL_28, write_diffusers_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def random_spd(d: int, seed: int) -> np.ndarray:
    a = np.random.default_rng(seed).normal(size=(d, 2 * d))
    return a @ a.T / (2 * d) + 0.01 * np.eye(d)


def scipy_frechet(mu1, s1, mu2, s2) -> float:
    """The textbook formula with scipy's general matrix square root (as the TTUR/pytorch-fid code)."""
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("d", [1, 5, 64])
def test_frechet_distance_matches_scipy(d):
    rng = np.random.default_rng(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = random_spd(d, 1), random_spd(d, 2)
    ours = frechet_distance(torch.tensor(mu1), torch.tensor(s1), torch.tensor(mu2), torch.tensor(s2))
    assert ours == pytest.approx(scipy_frechet(mu1, s1, mu2, s2), rel=1e-8, abs=1e-9)


def test_frechet_distance_closed_forms():
    # Diagonal covariances: d^2 = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2.
    a, b = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    mu1, mu2 = torch.zeros(3), torch.tensor([1.0, -2.0, 0.0])
    expected = 5.0 + float(((a.sqrt() - b.sqrt()) ** 2).sum())
    assert frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(expected, abs=1e-12)
    s = torch.tensor(random_spd(8, 3))
    assert frechet_distance(torch.ones(8), s, torch.ones(8), s) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="Mismatched"):
        frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(4), torch.eye(4))


def test_frechet_distance_of_samples_converges_to_the_gaussians():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20000, 4, generator=g, dtype=torch.float64)
    y = torch.randn(20000, 4, generator=g, dtype=torch.float64) * 2 + 1  # N(1, 4 I): d^2 = 4 + 4 * (2 - 1)^2 = 8
    assert frechet_distance(*feature_statistics(x), *feature_statistics(y)) == pytest.approx(8.0, rel=0.05)


def test_inception_score_limits_and_torch_fidelity():
    from torch_fidelity.metric_isc import isc_features_to_metric

    assert inception_score(torch.zeros(100, 10))[0] == pytest.approx(1.0)  # no confidence: IS = 1
    confident = torch.full((100, 10), -1e4)
    confident[torch.arange(100), torch.arange(100) % 10] = 0
    assert inception_score(confident)[0] == pytest.approx(10.0, rel=1e-6)  # confident and diverse: IS = classes
    logits = torch.randn(1000, 10, generator=torch.Generator().manual_seed(0)) * 3
    ref = isc_features_to_metric(logits, splits=10, shuffle=False)
    mean, std = inception_score(logits)
    assert mean == pytest.approx(ref["inception_score_mean"], rel=1e-9)
    assert std == pytest.approx(ref["inception_score_std"], rel=1e-6)


def test_statistics_refuse_fewer_samples_than_features():
    with pytest.raises(ValueError, match="more than 8 samples"):
        feature_statistics(torch.randn(8, 8))


# ----------------------------------------------------------------------------------- end to end, tiny data
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random 1x28x28 model and a random classifier with reference statistics of random 'test' images."""
    root = tmp_path_factory.mktemp("eval")
    write_diffusers_checkpoint(root / "model", SMALL_28, layout="subfolder")
    torch.manual_seed(0)
    model = clf.Classifier().eval()
    images = torch.randint(0, 256, (300, 1, 28, 28), dtype=torch.uint8)
    mu, sigma = feature_statistics(clf.extract(model, images)[0])
    clf.save(model, root / "classifier", {"mu": mu, "sigma": sigma}, {"test_accuracy": 0.1})
    return root


def test_evaluate_cli_end_to_end(tiny, tmp_path):
    out = tmp_path / "run"
    rc = ev.main(
        [
            "--model",
            str(tiny / "model"),
            "--sampler",
            "ddim",
            "--steps",
            "3",
            "-n",
            "150",
            "--batch-size",
            "64",
            "--classifier",
            str(tiny / "classifier"),
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 150 and metrics["seed"] == 0 and metrics["model_evaluations"] == 3
    assert metrics["reference"] == "fashion-mnist-test" and metrics["classifier_test_accuracy"] == 0.1
    assert metrics["fd"] > 0 and 1 <= metrics["is"] <= 10
    samples = np.load(out / "samples.npz")["arr_0"]
    assert samples.shape == (150, 28, 28, 1) and samples.dtype == np.uint8
    # Batch b starts from seed + b: batch 0 equals the pipeline's own sample for seed 0 (diffusers' noise).
    pipe = load(str(tiny / "model"))
    first = (pipe.sample("ddim", n=64, seed=0, num_inference_steps=3) * 255).round().to(torch.uint8)
    assert np.array_equal(samples[:64], first.permute(0, 2, 3, 1).numpy())
    # The score is a function of the images: rescoring the saved samples gives the same numbers.
    again = scoring.Scorer("classifier", "", tiny / "classifier").score(samples)
    assert again["fd"] == pytest.approx(metrics["fd"], abs=1e-3)
    # --score rescores saved images without a model.
    assert (
        ev.main(
            [
                "--score",
                str(out / "samples.npz"),
                "--classifier",
                str(tiny / "classifier"),
                "--out",
                str(tmp_path / "s"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "s" / "metrics.json").read_text())["fd"] == pytest.approx(metrics["fd"], abs=1e-3)


def test_sharded_generation_equals_one_process(tiny):
    pipe = load(str(tiny / "model"))
    opts = pipe.sampler_options("ddpm", num_inference_steps=2)
    whole, timing = generation.generate(pipe, "ddpm", opts, 10, 4, seed=5, progress=False)
    parts = {**generation.generate(pipe, "ddpm", opts, 10, 4, 5, rank=0, world=2, progress=False)[0],
             **generation.generate(pipe, "ddpm", opts, 10, 4, 5, rank=1, world=2, progress=False)[0]}
    assert sorted(whole) == sorted(parts) == [0, 1, 2]
    assert all(np.array_equal(whole[b], parts[b]) for b in whole)
    assert timing["evaluations"] == 2


def test_torchrun_two_processes_give_the_single_process_samples(tiny, tmp_path):
    """Two gloo processes sample alternate batches; process 0 gathers them in order."""
    import subprocess
    import sys

    common = ["--model", str(tiny / "model"), "--sampler", "ddim", "--steps", "2", "-n", "150", "--batch-size", "40",
              "--metric", "none", "--device", "cpu"]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
                          "-m", "training.evaluate", *common, "--out", str(tmp_path / "two")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert ev.main([*common, "--out", str(tmp_path / "one")]) == 0
    two = np.load(tmp_path / "two" / "samples.npz")["arr_0"]
    assert np.array_equal(two, np.load(tmp_path / "one" / "samples.npz")["arr_0"])
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["processes"] == 2


def test_table_rows_and_markdown(tiny, tmp_path):
    pipe = load(str(tiny / "model"))
    names = [r.name for r in eval_table.table_rows()]
    for expected in ("ddpm-fixed_large-1000", "ddpm-fixed_small-10", "ddim-eta0-50", "ddim-eta1-100"):
        assert expected in names
    assert generation.steps_for_evaluations(pipe, "ddim", 10) == 10
    scorer = scoring.Scorer("classifier", "", tiny / "classifier")
    scorer.check(pipe.image_shape, 150)
    rows = eval_table.run_table(pipe, scorer, tmp_path, 150, 150, 75, 0, only=["ddim-eta0-10"], save="npz")
    assert [r["name"] for r in rows] == ["ddim-eta0-10"] and rows[0]["n"] == 150
    # The row's samples are kept: scoring them again gives the row's numbers.
    assert np.load(tmp_path / "ddim-eta0-10" / "samples.npz")["arr_0"].shape == (150, 28, 28, 1)
    assert ev.score_images(scorer, str(tmp_path / "ddim-eta0-10" / "samples.npz"), 150, tmp_path / "again") == 0
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert again["fd"] == rows[0]["fd"] and again["blank"] == rows[0]["blank"]
    # Resuming keeps finished rows instead of recomputing them.
    assert eval_table.run_table(pipe, scorer, tmp_path, 150, 150, 75, 0, only=["ddim-eta0-10"]) == rows
    assert 0 <= rows[0]["blank"] <= 1
    md = eval_table.markdown_table(rows)
    assert "| ddim | eta 0 | 10 | 10 |" in md and "150" in md and f"| {100 * rows[0]['blank']:.1f}% |" in md
    # Options given for the whole table (--no-clip) reach every row.
    noclip = eval_table.run_table(
        pipe, scorer, tmp_path / "noclip", 150, 150, 150, 0, only=["ddim-eta1-10"], overrides={"clip_sample": False}
    )
    assert noclip[0]["options"]["clip_sample"] is False and "eta 1, x0 not clipped" in eval_table.markdown_table(noclip)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--metric", "inception"], "need --reference"),
        (["-n", "100"], "not more than the feature dimension"),
        (["--classifier", "/nonexistent"], "holds no classifier"),
        (["--reference", "nonsense"], "neither fashion-mnist-test"),
        (["--batch-size", "0"], "argument --batch-size: 0 is out of range: give at least 1"),
        (["--batch-size", "-1"], "argument --batch-size: -1 is out of range: give at least 1"),
        (["-n", "-5"], "argument -n/--num-samples: -5 is out of range: give at least 1"),
        (["-n", "1e3"], "argument -n/--num-samples: '1e3' is not a whole number"),
        (["--seed", "-1"], "argument --seed: -1 is out of range"),
        (["--n-long", "0"], "argument --n-long: 0 is out of range"),
        (["--rounds", "1"], "argument --rounds: 1 is out of range: give at least 2"),
        (["--out", "/proc/evaluation"], "Cannot write /proc/evaluation: no file can be created in /proc"),
        (
            ["--option", "steps_offset=-5"],
            "steps_offset must be a non-negative integer (every timestep must stay in 0..T-1)",
        ),
        (["--eta", "nan"], "eta must be a finite number, got nan"),
    ],
)
def test_evaluate_refuses_unclear_inputs(tiny, tmp_path, capsys, args, message):
    base = [
        "--model",
        str(tiny / "model"),
        "--classifier",
        str(tiny / "classifier"),
        "--out",
        str(tmp_path / "x"),
        "--device",
        "cpu",
    ]
    try:
        code = ev.main(base + args)
    except SystemExit as e:  # argparse's refusals
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.strip().splitlines()[-1].count("error:") == 1, err
    assert "Traceback" not in err
    assert not (tmp_path / "x").exists()  # refused before sampling anything


def test_classifier_metric_refuses_other_image_shapes(tmp_path, capsys):
    write_diffusers_checkpoint(tmp_path / "rgb", {**SMALL_28, "in_channels": 3, "out_channels": 3})
    assert ev.main(["--model", str(tmp_path / "rgb"), "--out", str(tmp_path / "x"), "--device", "cpu"]) == 2
    assert "1x28x28" in capsys.readouterr().err


def test_inception_path_through_torch_fidelity(tiny, tmp_path):
    """The torch-fidelity plumbing (dataset wrapping, reference caching, result keys) with a small stand-in
    feature extractor, since Inception's weights cannot be downloaded here; its FD must equal ours."""
    import torch_fidelity
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase

    class Tiny(FeatureExtractorBase):
        def __init__(self, name, features_list, **kwargs):
            super().__init__(name, features_list)
            torch.manual_seed(0)
            self.conv = torch.nn.Conv2d(3, 12, 7, stride=4)

        @staticmethod
        def get_provided_features_list():
            return ("12", "logits_unbiased")

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return {"fid": "12", "isc": "logits_unbiased"}.get(metric, "12")

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return None

        def forward(self, x):
            f = self.conv(x.float() / 255).mean(dim=(2, 3))
            return tuple(f for _ in self.features_list)

    if "tiny-test" not in torch_fidelity.registry.FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor("tiny-test", Tiny)
    g = np.random.default_rng(0)
    a = g.integers(0, 256, (200, 28, 28, 1), dtype=np.uint8)
    ref_dir = tmp_path / "ref"
    generation.save_samples(g.integers(0, 128, (200, 28, 28, 1), dtype=np.uint8), ref_dir, "png")
    m = scoring.inception_metrics(
        a, str(ref_dir / "samples"), feature_extractor="tiny-test", cache_root=str(tmp_path / "cache")
    )
    assert set(m) == {"fd", "is", "is_std"} and m["fd"] > 0
    ext = Tiny("tiny-test", ["12"]).eval()
    with torch.no_grad():
        fa = ext(torch.from_numpy(a).permute(0, 3, 1, 2).expand(-1, 3, -1, -1))[0]
        ref = scoring.reference_images(str(ref_dir / "samples"))
        fb = ext(ref.expand(-1, 3, -1, -1))[0]
    assert m["fd"] == pytest.approx(frechet_distance(*feature_statistics(fa), *feature_statistics(fb)), rel=1e-3)


def test_shipped_classifier():
    """The bundled classifier: under 2 MB, with its test accuracy and reference statistics."""
    folder = ROOT / "checkpoints" / "fashion-mnist-classifier"
    assert (folder / "classifier.safetensors").stat().st_size < 2_000_000
    model, reference, info = clf.load(folder)
    assert info["test_accuracy"] >= 0.9
    assert reference["mu"].shape == (clf.FEATURES,) and reference["sigma"].shape == (clf.FEATURES, clf.FEATURES)
    test_images, labels = clf.load_labelled("test")
    _, logits = clf.extract(model, test_images[:2000])
    assert (logits.argmax(1) == labels[:2000]).double().mean() >= 0.88


def test_blank_fraction_counts_empty_frames_and_no_real_image():
    """No real Fashion-MNIST image (train or test) counts as blank; an empty frame, a few specks and a
    faint uniform haze do; a garment shrunk to a corner of the frame does not."""
    for split in ("test", "train"):
        images, _ = clf.load_labelled(split)
        assert blank_fraction(images) == 0.0
    real = clf.load_labelled("test")[0][:6].clone()
    real[1] = 0  # empty
    real[2] = 0
    real[2, 0, 10, 10:20] = 255  # ten specks: 1.3% of the frame
    real[3] = 20  # haze below the lit level (8% of full scale)
    real[4] = 0
    real[4, 0, :6, :6] = 200  # a small object: 36 pixels, 4.6%
    assert blank_fraction(real) == pytest.approx(3 / 6)
    assert blank_fraction(real.float() / 255) == pytest.approx(3 / 6)  # [0, 1] floats count the same
    with pytest.raises(ValueError, match="rank 4"):
        blank_fraction(real[0])


def test_precision_recall_known_answers():
    """Improved precision/recall (Kynkaanniemi et al. 2019) on the shipped classifier's features of real
    Fashion-MNIST test images: two disjoint real sets score near 1 on both; replacing half of one set by
    noise images halves precision (they leave the data manifold) and leaves recall high."""
    model, _, _ = clf.load(ROOT / "checkpoints" / "fashion-mnist-classifier")
    images, _ = clf.load_labelled("test")
    real_a, real_b = clf.extract(model, images[:1000])[0], clf.extract(model, images[1000:2000])[0]
    precision, recall = precision_recall(real_a, real_b)
    assert precision > 0.85 and recall > 0.85  # k = 3 balls: about 0.9 for two real sets of 1,000
    noise = torch.randint(0, 256, (500, 1, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    half_noise = torch.cat([real_a[:500], clf.extract(model, noise)[0]])
    precision, recall = precision_recall(half_noise, real_b)
    assert precision == pytest.approx(0.5, abs=0.05) and recall > 0.8
    # The definition by hand on points whose answer is obvious: a far outlier is outside every real ball.
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0]])
    generated = torch.tensor([[0.5], [1.5], [2.5], [100.0], [3.5]])
    assert precision_recall(generated, real) == pytest.approx((0.8, 1.0))
    with pytest.raises(ValueError, match="more than 3"):
        precision_recall(real[:3], real)


def test_frechet_difference_bootstrap_and_compare_cli(tmp_path, capsys):
    """The paired bootstrap: a set against itself differs by exactly 0 in every round; real test images against
    the same images with a third replaced by noise are ahead in every round, by more than the spread; unequal
    sets are refused. The --compare CLI gives the same numbers from two samples.npz files."""
    model, reference, _ = clf.load(ROOT / "checkpoints" / "fashion-mnist-classifier")
    images = clf.load_labelled("test")[0][:300]
    noisy = images.clone()
    noisy[:100] = torch.randint(0, 256, (100, 1, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    fa, fb = clf.extract(model, images)[0], clf.extract(model, noisy)[0]
    same = frechet_difference(fa, fa, reference["mu"], reference["sigma"], rounds=20)
    assert same["difference"] == 0 and same["std"] == 0 and same["p_a_lower"] == 0
    r = frechet_difference(fa, fb, reference["mu"], reference["sigma"], rounds=50)
    assert r["fd_a"] == pytest.approx(frechet_distance(*feature_statistics(fa), reference["mu"], reference["sigma"]))
    assert r["difference"] < -3 * r["std"] < 0 and r["p_a_lower"] == 1.0
    with pytest.raises(ValueError, match="same size"):
        frechet_difference(fa, fb[:200], reference["mu"], reference["sigma"])
    for name, x in (("a", images), ("b", noisy)):
        (tmp_path / name).mkdir()
        np.savez(tmp_path / name / "samples.npz", arr_0=x.permute(0, 2, 3, 1).numpy())
    out = tmp_path / "cmp"
    assert ev.main(["--compare", str(tmp_path / "a"), str(tmp_path / "b" / "samples.npz"), "--rounds", "50",
                    "--out", str(out)]) == 0
    saved = json.loads((out / "compare.json").read_text())
    assert saved["difference"] == pytest.approx(r["difference"]) and saved["p_a_lower"] == 1.0 and saved["n"] == 300
    assert "a scored lower in 100%" in capsys.readouterr().out
    # --reference holds as in scoring: against A's own images, A's FD is zero.
    assert ev.main(["--compare", str(tmp_path / "a"), str(tmp_path / "b"), "--rounds", "2", "--reference",
                    str(tmp_path / "a" / "samples.npz"), "--out", str(out)]) == 0
    assert json.loads((out / "compare.json").read_text())["fd_a"] == pytest.approx(0, abs=1e-6)
    assert ev.main(["--compare", str(tmp_path / "a"), str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "no samples at" in capsys.readouterr().err
    # The same samples twice: refused by path; identical samples under two names: every round a tie, said so.
    assert ev.main(["--compare", str(tmp_path / "a"), str(tmp_path / "a" / "samples.npz"), "--out", str(out)]) == 2
    assert "A and B are the same file" in capsys.readouterr().err
    shutil.copytree(tmp_path / "a", tmp_path / "a2")
    assert ev.main(["--compare", str(tmp_path / "a"), str(tmp_path / "a2"), "--rounds", "4", "--out", str(out)]) == 0
    assert "a scored lower in 0% of them, b in 0%, tied in 100%" in capsys.readouterr().out


def write_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


NPZ_CASES = {  # name: (arrays, message, or None when read)
    "key not arr_0, the only array": ({"images": np.zeros((3, 28, 28, 1), np.uint8)}, None),
    "two arrays, no arr_0": (
        {"x": np.zeros((3, 28, 28, 1), np.uint8), "y": np.zeros(3)}, "holds x, y; put the images under arr_0"
    ),
    "NaN": ({"arr_0": np.full((3, 28, 28, 1), np.nan, np.float32)}, "hold NaN or infinite values"),
    "floats in [0, 1]": ({"arr_0": np.full((3, 28, 28, 1), 0.5, np.float32)}, None),
    "floats in [0, 255]": ({"arr_0": np.full((3, 28, 28, 1), 200.0, np.float32)}, "float images from 200 to 200"),
    "int16 beyond 255": ({"arr_0": np.full((3, 28, 28, 1), 300, np.int16)}, "int16 images from 300 to 300"),
    "channels first": ({"arr_0": np.zeros((3, 1, 28, 28), np.uint8)}, "expected (N, H, W, C) with C = 1 or 3"),
    "no images": ({"arr_0": np.zeros((0, 28, 28, 1), np.uint8)}, "expected (N, H, W, C) with C = 1 or 3 and N >= 1"),
    "grey without a channel axis": ({"arr_0": np.zeros((3, 28, 28), np.uint8)}, None),
}


@pytest.mark.parametrize("case", NPZ_CASES, ids=list(NPZ_CASES))
def test_samples_npz_read_by_their_range_or_refused(case, tmp_path, capsys):
    arrays, message = NPZ_CASES[case]
    path = write_npz(tmp_path / "samples.npz", **arrays)
    if message:
        with pytest.raises(ValueError, match=re.escape(message)):
            scoring.read_samples_npz(path)
        return
    x = scoring.read_samples_npz(path)
    assert x.dtype == torch.uint8 and x.shape == (3, 1, 28, 28)
    if case == "floats in [0, 1]":
        assert (x == 128).all() and "float images in [0, 1], scaled to 0-255" in capsys.readouterr().out


def test_compare_refuses_a_bad_npz_in_one_line(tmp_path, capsys):
    write_npz(tmp_path / "a.npz", arr_0=np.zeros((300, 28, 28, 1), np.uint8))
    write_npz(tmp_path / "b.npz", arr_0=np.full((300, 28, 28, 1), np.nan, np.float32))
    assert ev.main(["--compare", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {tmp_path / 'b.npz'}: the images hold NaN or infinite values; they cannot be scored.\n"


# ----------------------------------------------------------------------------------- classifier-free guidance
@pytest.fixture(scope="module")
def tiny_cond(tiny):
    """The tiny 28x28 model made class-conditional with Fashion-MNIST's ten classes and a null label."""
    from diffusion import DiffusionPipeline, UNet, UNetConfig
    from diffusion.classes import ClassInfo

    torch.manual_seed(1)
    unet = UNet(UNetConfig(**{**SMALL_28, "num_class_embeds": 11}))
    with torch.no_grad():
        unet.class_embedding.weight.normal_(0, 2.0)
    DiffusionPipeline(unet, {}, classes=ClassInfo(tuple(clf.CLASSES), 10, 3.0)).save_pretrained(tiny / "cond")
    reference = torch.randint(0, 256, (200, 28, 28, 1), generator=torch.Generator().manual_seed(2)).to(torch.uint8)
    np.savez(tiny / "reference.npz", arr_0=reference.numpy())  # a small reference: no 10,000 test images to read
    return tiny / "cond"


def test_guidance_table_rows_share_noise_and_classes_and_compare_with_guidance_1(tiny, tiny_cond, tmp_path):
    pipe = load(str(tiny_cond))
    scorer = scoring.Scorer("classifier", str(tiny / "reference.npz"), tiny / "classifier")
    options = pipe.sampler_options("ddim", num_inference_steps=3)
    rows = eval_table.run_guidance_table(pipe, scorer, tmp_path, "ddim", options, 150, 75, 0, (0.0, 1.0, 3.0), 8)
    assert [r["guidance_scale"] for r in rows] == [0.0, 1.0, 3.0]
    assert all(0 <= r["accuracy"] <= 1 for r in rows)
    assert "vs_guidance_1" not in rows[1] and rows[0]["vs_guidance_1"]["rounds"] == 8
    # the same noise and classes in every row: guidance 1 equals a plain conditional run of the model
    one = np.load(tmp_path / "guidance-1" / "samples.npz")["arr_0"]
    shards, _ = generation.generate(pipe, "ddim", options, 150, 75, 0, progress=False, guidance_scale=1.0)
    assert np.array_equal(one, np.concatenate([shards[0], shards[1]]))
    assert not np.array_equal(one, np.load(tmp_path / "guidance-3" / "samples.npz")["arr_0"])
    # accuracy is the classifier's agreement with class i mod 10 of sample i
    model, _, _ = clf.load(tiny / "classifier")
    logits = clf.extract(model, torch.from_numpy(one).permute(0, 3, 1, 2))[1]
    assert rows[1]["accuracy"] == round((logits.argmax(1) == torch.arange(150) % 10).double().mean().item(), 4)
    md = eval_table.guidance_markdown(rows)
    assert "| guidance s | FD | IS | precision | recall | accuracy |" in md and "| 1 |" in md and " ± " in md
    assert eval_table.run_guidance_table(pipe, scorer, tmp_path, "ddim", options, 150, 75, 0, (0.0, 1.0, 3.0),
                                         8) == rows  # resumed: nothing recomputed


def test_guidance_cli_and_its_refusals(tiny, tiny_cond, tmp_path, capsys):
    common = ["--steps", "3", "-n", "150", "--batch-size", "150", "--classifier", str(tiny / "classifier"),
              "--reference", str(tiny / "reference.npz")]
    assert ev.main(["--model", str(tiny_cond), "--guidance", "--guidance-scales", "1,2", "--rounds", "4", *common,
                    "--out", str(tmp_path / "g")]) == 0
    assert "| 2 |" in (tmp_path / "g" / "guidance.md").read_text()
    assert ev.main(["--model", str(tiny / "model"), "--guidance", *common, "--out", str(tmp_path / "u")]) == 2
    assert "needs a class-conditional model" in capsys.readouterr().err
    assert ev.main(["--model", str(tiny_cond), *common, "--guidance-scale", "2", "--out", str(tmp_path / "one")]) == 0
    row = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert row["guidance_scale"] == 2.0 and "accuracy" in row
