"""DPM-Solver++ (ODE and SDE), PNDM, Euler, Euler ancestral and Heun against diffusers' schedulers of the
same names, step for step, on the same model and noise (and the same generator for the per-step noise), with
the spacings' sigmas and Karras / exponential / beta ones; their model-evaluation counts; their options."""

from __future__ import annotations

import inspect
import math
import re

import numpy as np
import pytest
import torch

import diffusion
from diffusion import DiffusionPipeline, UNet, UNetConfig
from diffusion.pipeline import to_unit
from diffusion.samplers import SAMPLERS, get_sampler
from diffusion.schedule import NoiseSchedule

from conftest import TINY_16, TINY_PLAIN, random_diffusers_unet

# Samples and every intermediate x agree to 1e-4. What is left is float32 rounding, mostly diffusers'
# alpha-bar (a float32 cumulative product over 1000 betas, ours is float64): with its alpha-bar our
# samplers land within 2e-5 even at 4 steps.
TOL = 1e-4
C2 = 0.25  # variance of the Gaussian "data" the test model denoises


def schedulers():
    from diffusers import (
        DPMSolverMultistepScheduler,
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
        HeunDiscreteScheduler,
        PNDMScheduler,
    )

    return {
        "dpm-solver++": DPMSolverMultistepScheduler,
        "euler": EulerDiscreteScheduler,
        "euler-ancestral": EulerAncestralDiscreteScheduler,
        "heun": HeunDiscreteScheduler,
        "pndm": PNDMScheduler,
    }


SIGMA_SPACE = ("euler", "euler-ancestral", "heun")  # diffusers holds x_sigma = x_t sqrt(sigma^2 + 1) for these


def make_scheduler(name: str, **config):
    # HeunDiscreteScheduler's own betas are Stable Diffusion's (0.00085..0.012): use the DDPM betas of our schedule.
    betas = dict(beta_start=1e-4, beta_end=0.02) if name == "heun" else {}
    return schedulers()[name](**betas, **config)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def unet():
    return random_diffusers_unet(TINY_16, seed=0, std=0.05)


def make_model(unet, prediction: str = "epsilon"):
    """The exact denoiser of N(0, C2 I) data, plus a tiny random UNet (so a network, nonlinear in x and t,
    drives every step). The Gaussian part keeps samples in the data range: a random UNet alone predicts
    almost no noise, leaving Euler's x_T * sigma_max (~157) in place and a 1e-4 tolerance meaningless."""
    abar = NoiseSchedule.from_config().alphas_cumprod.numpy()

    def model(x, t):
        a = float(np.interp(float(t), np.arange(len(abar)), abar))  # fractional t for Euler / Heun
        with torch.no_grad():
            net = unet(x, torch.as_tensor(t)).sample
        sa, s1a, den = math.sqrt(a), math.sqrt(1 - a), a * C2 + 1 - a
        eps, x0 = s1a * x / den, sa * C2 * x / den
        return {"epsilon": eps, "sample": x0, "v_prediction": sa * eps - s1a * x0}[prediction] + net

    return model


def diffusers_loop(scheduler, model, steps: int, x: torch.Tensor, generator: torch.Generator | None = None):
    """diffusers' pipeline loop (``generator`` passed to ``step`` where it takes one). Returns the sample, x
    after every model call in the variance-preserving scale (Euler, Euler ancestral and Heun hold
    x_sigma = x_t sqrt(sigma^2 + 1)), and the number of model calls."""
    scheduler.set_timesteps(steps)
    x = x * scheduler.init_noise_sigma
    after = []
    kw = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    sigma_space = isinstance(scheduler, tuple(schedulers()[n] for n in SIGMA_SPACE))
    for t in scheduler.timesteps:
        x = scheduler.step(model(scheduler.scale_model_input(x, t), t), t, x, **kw).prev_sample
        sigma = float(scheduler.sigmas[scheduler.step_index]) if sigma_space else 0.0
        after.append(x / math.sqrt(sigma**2 + 1))
    return x, after, len(scheduler.timesteps)


def our_loop(name: str, model, steps: int, x: torch.Tensor, generator: torch.Generator | None = None, **options):
    spec = get_sampler(name)
    return list(
        spec.fn(
            model, x, NoiseSchedule.from_config(), spec.make_options(num_inference_steps=steps, **options), generator
        )
    )


CASES = [
    # DPM-Solver++: three spacings and step counts, the prediction types, order 1 / 3, "heun" type, sigma_min end.
    ("dpm-solver++", 10, dict(timestep_spacing="linspace")),
    ("dpm-solver++", 20, dict(timestep_spacing="leading")),
    ("dpm-solver++", 50, dict(timestep_spacing="trailing")),
    ("dpm-solver++", 20, dict(prediction_type="v_prediction")),
    ("dpm-solver++", 10, dict(prediction_type="sample", solver_order=1)),
    ("dpm-solver++", 20, dict(solver_order=3, timestep_spacing="leading", steps_offset=1)),
    ("dpm-solver++", 20, dict(solver_type="heun", final_sigmas_type="sigma_min")),
    # Euler: fractional timesteps with linspace.
    ("euler", 10, dict(timestep_spacing="linspace")),
    ("euler", 20, dict(timestep_spacing="leading")),
    ("euler", 50, dict(timestep_spacing="trailing")),
    ("euler", 20, dict(prediction_type="v_prediction")),
    ("euler", 10, dict(prediction_type="sample", final_sigmas_type="sigma_min")),
    # Heun: 2N - 1 evaluations.
    ("heun", 10, dict(timestep_spacing="linspace")),
    ("heun", 20, dict(timestep_spacing="trailing")),
    ("heun", 50, dict(timestep_spacing="leading")),
    ("heun", 10, dict(prediction_type="v_prediction")),
    ("heun", 10, dict(prediction_type="sample", clip_sample=True, clip_sample_range=0.3)),
    # Euler ancestral: fresh noise from the generator at every step.
    *[
        ("euler-ancestral", n, dict(timestep_spacing=sp, prediction_type=p))
        for n in (10, 25)
        for sp in ("linspace", "leading", "trailing")
        for p in ("epsilon", "v_prediction")
    ],
    # SDE-DPM-Solver++: orders 1 and 2 (and diffusers' 3), both second-order types, the sigma_min end.
    *[
        (
            "dpm-solver++",
            n,
            dict(algorithm_type="sde-dpmsolver++", solver_order=k, timestep_spacing=sp, prediction_type=p),
        )
        for n in (10, 25)
        for k, sp, p in (
            (1, "linspace", "epsilon"),
            (2, "leading", "v_prediction"),
            (2, "trailing", "epsilon"),
            (2, "linspace", "v_prediction"),
            (3, "linspace", "epsilon"),
        )
    ],
    ("dpm-solver++", 20, dict(algorithm_type="sde-dpmsolver++", solver_type="heun", final_sigmas_type="sigma_min")),
    ("dpm-solver++", 25, dict(algorithm_type="sde-dpmsolver++", use_karras_sigmas=True)),
    # Karras, exponential and beta sigmas: 10 and 25 steps, each spacing, epsilon and v.
    *[
        (name, n, {kind: True, "timestep_spacing": sp, "prediction_type": p})
        for name in ("dpm-solver++", "euler", "heun")
        for kind in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
        for n in (10, 25)
        for sp in ("linspace", "leading", "trailing")
        for p in ("epsilon", "v_prediction")
    ],
    ("dpm-solver++", 20, dict(use_karras_sigmas=True, solver_order=3, solver_type="heun")),
    ("euler", 10, dict(use_karras_sigmas=True, final_sigmas_type="sigma_min", sigma_min=0.1, sigma_max=50.0)),
    # PNDM: with and without the Runge-Kutta warm-up.
    *[
        ("pndm", n, dict(timestep_spacing=sp, skip_prk_steps=skip))
        for n, sp in ((10, "leading"), (20, "linspace"), (50, "trailing"))
        for skip in (False, True)
    ],
    ("pndm", 10, dict(prediction_type="v_prediction")),
    ("pndm", 10, dict(set_alpha_to_one=True, steps_offset=1, skip_prk_steps=True)),
]


@pytest.mark.parametrize(
    "name,steps,options",
    CASES,
    ids=[f"{n}-{s}-{'-'.join(k if v is True else str(v) for k, v in o.items())}" for n, s, o in CASES],
)
def test_matches_diffusers_step_for_step(unet, name, steps, options):
    model = make_model(unet, options.get("prediction_type", "epsilon"))
    x = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(steps))
    scheduler = make_scheduler(name, **options)
    x_ref, after, calls = diffusers_loop(scheduler, model, steps, x, torch.Generator().manual_seed(1))
    steps_ = our_loop(name, model, steps, x, torch.Generator().manual_seed(1), **options)
    spec = get_sampler(name)
    # The same model timesteps (fractional ones too), one Step per inference step, and every model call counted.
    assert spec.timesteps(1000, spec.make_options(num_inference_steps=steps, **options)) == [
        float(t) for t in scheduler.timesteps
    ]
    assert len(steps_) == steps and sum(s.evaluations for s in steps_) == calls
    # x after each step against diffusers' x after the step's last model call, then the sample (as diffusers
    # returns it: x_sigma for Euler, 1.00005 x_t with final_sigmas_type="sigma_min").
    ends = np.cumsum([s.evaluations for s in steps_]) - 1
    assert max((s.x_prev - after[j]).abs().max().item() for s, j in zip(steps_[:-1], ends[:-1])) <= TOL
    # A sample, not zeros or x_T * 157 (the range is wide for beta sigmas: at 10 steps their last model evaluation
    # is at t = 629, where the Gaussian part's posterior mean is small), to 1e-4 absolute and, where the sample
    # is not clipped into a narrow range, relative (Heun's x0 clipped to +-0.3 ends 5.5e-5 away: 1.8e-4 relative).
    assert 0.02 < x_ref.abs().mean() < 5
    narrow = options.get("clip_sample_range", 1.0) < 1.0
    bound = TOL if narrow else TOL * min(1.0, x_ref.abs().max().item())
    assert (steps_[-1].x_prev - x_ref).abs().max().item() <= bound


def test_pndm_sample_prediction_is_epsilon_converted(unet):
    """diffusers' PNDM refuses prediction_type="sample"; ours converts x0 to epsilon as diffusers converts v
    (after the multistep combination of the raw outputs). One step of one evaluation is then diffusers' step
    with the model converted to epsilon."""
    x = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(3))
    x0_model = make_model(unet, "sample")
    abar = NoiseSchedule.from_config().alphas_cumprod

    def eps_model(x, t):
        a = abar[int(t)].item()
        return (x - a**0.5 * x0_model(x, t)) / (1 - a) ** 0.5

    x_ref, _, _ = diffusers_loop(make_scheduler("pndm", skip_prk_steps=True), eps_model, 1, x)
    one = our_loop("pndm", x0_model, 1, x, prediction_type="sample", skip_prk_steps=True)
    assert (one[-1].x_prev - x_ref).abs().max().item() <= TOL
    assert 0.1 < our_loop("pndm", x0_model, 20, x, prediction_type="sample")[-1].x_prev.abs().mean() < 2


def count_calls(name: str, steps: int, **options) -> tuple[int, int, int]:
    """(model calls, sum of Step.evaluations, len(plan)) of our sampler with a zero model."""
    calls = 0

    def model(x, t):
        nonlocal calls
        calls += 1
        return torch.zeros_like(x)

    spec = get_sampler(name)
    opts = spec.make_options(num_inference_steps=steps, **options)
    evaluations = sum(s.evaluations for s in spec.fn(model, torch.randn(1, 1, 4, 4), NoiseSchedule.from_config(), opts))
    return calls, evaluations, len(spec.timesteps(1000, opts))


NFE = [  # model evaluations for N inference steps
    ("dpm-solver++", {}, lambda n: n),
    ("dpm-solver++", {"use_karras_sigmas": True}, lambda n: n),
    ("dpm-solver++", {"algorithm_type": "sde-dpmsolver++", "use_beta_sigmas": True}, lambda n: n),
    ("euler", {}, lambda n: n),
    ("euler", {"use_exponential_sigmas": True}, lambda n: n),
    ("euler-ancestral", {}, lambda n: n),
    ("heun", {}, lambda n: 2 * n - 1),
    ("heun", {"use_karras_sigmas": True}, lambda n: 2 * n - 1),
    ("pndm", {}, lambda n: n + 9),  # 3 Runge-Kutta steps of 4 evaluations, then N - 3 PLMS steps
    ("pndm", {"skip_prk_steps": True}, lambda n: n + 1 if n > 1 else 1),  # a predictor-corrector first step, then PLMS
]


@pytest.mark.parametrize("name,options,nfe", NFE, ids=[f"{n}-{'-'.join(map(str, o.values()))}" for n, o, _ in NFE])
def test_evaluations_are_the_model_calls(name, options, nfe):
    for steps in (1, 2, 3, 4, 5, 7, 13, 30, 100):
        if name == "pndm" and not options and steps < 4:
            continue
        scheduler = make_scheduler(name, **options)
        scheduler.set_timesteps(steps)
        assert count_calls(name, steps, **options) == (nfe(steps),) * 3 == (len(scheduler.timesteps),) * 3


def test_steps_display_in_the_variance_preserving_scale(unet):
    """x_t / x_prev are x_sigma / sqrt(sigma^2 + 1), each step's x_prev is the next step's x_t, t is an int."""
    x = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    model = make_model(unet)
    for name in ("dpm-solver++", "euler", "euler-ancestral", "heun", "pndm"):
        steps = our_loop(name, model, 6, x, timestep_spacing="leading")
        assert [s.index for s in steps] == list(range(6))
        assert all(isinstance(s.t, int) and isinstance(s.t_prev, int) for s in steps) and steps[-1].t_prev < 0
        assert all(torch.equal(a.x_prev, b.x_t) for a, b in zip(steps, steps[1:]))
        assert (steps[0].x_t - x).abs().max() < 1e-5  # leading: x_T * sqrt(sigma^2 + 1) / sqrt(sigma^2 + 1)
    euler = our_loop("euler", model, 6, x)  # linspace: diffusers starts from x_T * sigma_max, a hair under x_T's scale
    assert euler[0].t == 999 and euler[1].t == round(999 * 4 / 5) and (euler[0].x_t - x).abs().max() < 1e-3


PIPELINE_CASES = [
    ("dpm-solver++", 15, {}),
    ("euler", 10, {}),
    ("heun", 6, {}),
    ("pndm", 8, {}),
    ("euler-ancestral", 10, {}),
    ("dpm-solver++", 20, {"use_karras_sigmas": True}),
    ("dpm-solver++", 12, {"algorithm_type": "sde-dpmsolver++"}),
    ("euler", 10, {"use_exponential_sigmas": True}),
    ("heun", 6, {"use_beta_sigmas": True}),
]


def test_pipeline_sample_equals_the_diffusers_loop(diffusers_checkpoint):
    """Same seed, same images through DiffusionPipeline (our UNet, options from the checkpoint's
    DDPMScheduler config) and diffusers (UNet2DModel, ``Scheduler.from_pretrained`` of that config): one
    generator draws x_T, then the ancestral / SDE samplers' per-step noise, in both."""
    path, unet = diffusers_checkpoint
    pipe = diffusion.load(path)
    for name, steps, options in PIPELINE_CASES:
        scheduler = schedulers()[name].from_pretrained(path, subfolder="scheduler", **options)
        generator = torch.Generator().manual_seed(7)
        x = torch.randn((2, 1, 16, 16), generator=generator)
        with torch.no_grad():
            x_ref, _, _ = diffusers_loop(scheduler, lambda x, t: unet(x, t).sample, steps, x, generator)
        last = list(pipe.denoise(name, n=2, seed=7, num_inference_steps=steps, **options))[-1].x_prev
        # A random UNet predicts little noise, so x stays large (Euler: ~x_T * sigma_max): compare relatively too.
        assert (last - x_ref).abs().max().item() <= TOL * max(1.0, x_ref.abs().max().item()), (name, options)
        assert (
            pipe.sample(name, n=2, seed=7, num_inference_steps=steps, **options) - to_unit(x_ref)
        ).abs().max().item() <= TOL, (name, options)


def tiny_pipeline(config: dict) -> DiffusionPipeline:
    return DiffusionPipeline(UNet(UNetConfig(**TINY_PLAIN)), config)


def test_options_come_from_the_config_as_diffusers_from_config():
    """Keys the checkpoint's scheduler config sets fill the options of the samplers that take them; keys
    it leaves out (or lists in _use_default_values) keep each sampler's diffusers default."""
    saved = tiny_pipeline({"timestep_spacing": "leading", "clip_sample": True, "prediction_type": "v_prediction"})
    assert saved.sampler_options("dpm-solver++").timestep_spacing == "leading"
    assert (
        saved.sampler_options("heun").clip_sample is True
        and saved.sampler_options("heun").prediction_type == "v_prediction"
    )
    assert not hasattr(saved.sampler_options("euler"), "clip_sample")
    old = tiny_pipeline({"beta_schedule": "linear", "clip_sample": True})  # google/ddpm-cifar10-32: no spacing key
    assert old.sampler_options("dpm-solver++").timestep_spacing == "linspace"
    assert (
        old.sampler_options("euler").timestep_spacing == "linspace"
        and old.sampler_options("pndm").timestep_spacing == "leading"
    )
    assert old.sampler_options("ddim").timestep_spacing == "leading" and old.sampler_options("ddpm").clip_sample is True
    loaded = tiny_pipeline({"timestep_spacing": "leading", "_use_default_values": ["timestep_spacing"]})
    assert (
        loaded.sampler_options("heun").timestep_spacing == "linspace"
        and loaded.sampler_options("heun").clip_sample is False
    )
    assert loaded.sampler_options("pndm", skip_prk_steps=True).skip_prk_steps is True
    assert tiny_pipeline({"set_alpha_to_one": True}).sampler_options("pndm").set_alpha_to_one is True


@pytest.mark.parametrize("name", ["dpm-solver++", "euler"])
def test_config_keys_diffusers_would_honour_are_refused_not_ignored(name):
    """A scheduler config asking for what diffusers' scheduler of the same name would do and ours does
    not (Lu lambdas, continuous timesteps) is refused with the key; the "off" values, as diffusers saves
    them, pass; samplers whose diffusers counterpart ignores the key (DDIM) still sample."""
    spec = get_sampler(name)
    defaults = make_scheduler(name).config
    assert spec.refuses and all(defaults[k] == off for k, off in spec.refuses.items())  # "off" is diffusers' default
    assert not {"use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"} & set(spec.refuses)  # implemented now
    assert tiny_pipeline(dict(defaults)).sampler_options(name).num_inference_steps > 0
    for key, off in spec.refuses.items():
        on = {False: True, "discrete": "continuous"}.get(off, -5.0)
        with pytest.raises(
            ValueError, match=re.escape(f"sets {key}={on!r}, which diffusers honours but the '{name}' sampler does not")
        ):
            tiny_pipeline({key: on}).sampler_options(name)
        assert tiny_pipeline({key: on}).sampler_options("ddim").num_inference_steps == 50
        assert tiny_pipeline({key: on, "_use_default_values": [key]}).sampler_options(name)  # diffusers' own default


@pytest.mark.parametrize("name", ["dpm-solver++", "euler", "heun"])
def test_sigma_options_come_from_the_config(name):
    """Karras, exponential and beta sigmas are honoured from the checkpoint's scheduler config (and the
    command line's overrides), one at a time as diffusers allows; heun refuses nothing any more."""
    assert get_sampler("heun").refuses == {}
    for key in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
        assert getattr(tiny_pipeline({key: True}).sampler_options(name), key) is True
        assert getattr(tiny_pipeline({key: True}).sampler_options(name, **{key: False}), key) is False
        # diffusers' ignores it too
        assert not hasattr(tiny_pipeline({key: True}).sampler_options("euler-ancestral"), key)
    with pytest.raises(
        ValueError, match="Only one of use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas can be true"
    ):
        tiny_pipeline({"use_karras_sigmas": True, "use_beta_sigmas": True}).sampler_options(name)
    with pytest.raises(ValueError, match="use_karras_sigmas and use_exponential_sigmas"):
        get_sampler(name).make_options(use_karras_sigmas=True, use_exponential_sigmas=True)


def test_sigma_plans_follow_the_models_betas():
    """With a sigma option the timesteps depend on the betas: the plan of a cosine schedule is diffusers' for
    that schedule (DPM-Solver++: Karras timesteps not rounded but truncated, as diffusers does for
    "squaredcos_cap_v2"), and SamplerSpec.timesteps given an int T means the default linear schedule."""
    cosine = NoiseSchedule.from_config("squaredcos_cap_v2")
    for name, kind in (
        ("dpm-solver++", "use_karras_sigmas"),
        ("euler", "use_exponential_sigmas"),
        ("heun", "use_beta_sigmas"),
    ):
        spec, options = get_sampler(name), {kind: True, "num_inference_steps": 25}
        scheduler = make_scheduler(name, beta_schedule="squaredcos_cap_v2", **{kind: True})
        scheduler.set_timesteps(25)
        assert spec.timesteps(cosine, spec.make_options(**options)) == [float(t) for t in scheduler.timesteps], name
        assert spec.timesteps(1000, spec.make_options(**options)) == spec.timesteps(
            NoiseSchedule.from_config(), spec.make_options(**options)
        )


def test_registry_lists_the_new_samplers_with_diffusers_defaults():
    assert {"dpm-solver++", "pndm", "euler", "euler-ancestral", "heun"} <= set(SAMPLERS)
    assert get_sampler("dpm-solver++").options().num_inference_steps == 20
    for name in ("dpm-solver++", "euler", "euler-ancestral", "heun", "pndm"):
        ours = get_sampler(name).options()
        config = make_scheduler(name).config
        for field in ours.__dataclass_fields__:
            if field in config and field != "num_inference_steps":
                assert getattr(ours, field) == config[field], (name, field)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: get_sampler("dpm-solver++").make_options(solver_order=4), "solver_order=4 is not one of 1, 2, 3"),
        (
            lambda: get_sampler("dpm-solver++").make_options(algorithm_type="sde-dpmsolver"),
            "algorithm_type='sde-dpmsolver' is not one of",
        ),
        (
            lambda: get_sampler("euler-ancestral").make_options(use_karras_sigmas=True),
            "Sampler 'euler-ancestral' has no option 'use_karras_sigmas'",
        ),
        (lambda: get_sampler("heun").make_options(use_beta_sigmas=True, use_karras_sigmas=True), "Only one of"),
        (
            lambda: get_sampler("euler").make_options(use_karras_sigmas=True, sigma_min=0.0),
            "sigma_min must be positive",
        ),
        (
            lambda: get_sampler("dpm-solver++").make_options(solver_type="bh2"),
            "solver_type='bh2' is not one of 'midpoint', 'heun'",
        ),
        (
            lambda: get_sampler("dpm-solver++").make_options(final_sigmas_type="one"),
            "final_sigmas_type='one' is not one of",
        ),
        (
            lambda: get_sampler("euler").make_options(timestep_spacing="quad"),
            "timestep_spacing='quad' is not one of 'leading', 'linspace', 'trailing'",
        ),
        (
            lambda: get_sampler("euler").make_options(interpolation_type="log_linear"),
            "interpolation_type='log_linear' is not one of 'linear'",
        ),
        (lambda: get_sampler("euler").make_options(clip_sample=True), "Sampler 'euler' has no option 'clip_sample'"),
        (lambda: get_sampler("heun").make_options(clip_sample_range=0), "clip_sample_range must be positive"),
        (lambda: get_sampler("heun").make_options(prediction_type="flow"), "prediction_type='flow' is not one of"),
        (
            lambda: get_sampler("pndm").make_options(num_inference_steps=3),
            "warm-up .* needs at least 4 .* skip_prk_steps=True",
        ),
        (lambda: get_sampler("pndm").make_options(eta=0.5), "Sampler 'pndm' has no option 'eta'"),
        (
            lambda: get_sampler("dpm-solver++").timesteps(
                1000, get_sampler("dpm-solver++").make_options(num_inference_steps=1000, timestep_spacing="leading")
            ),
            "'leading' spacing repeats timesteps at 1000 steps",
        ),
        (
            lambda: get_sampler("heun").timesteps(1000, get_sampler("heun").make_options(num_inference_steps=1001)),
            "between 1 and 1000",
        ),
        (
            lambda: get_sampler("euler").timesteps(
                1000,
                get_sampler("euler").make_options(num_inference_steps=10, timestep_spacing="leading", steps_offset=100),
            ),
            "past the last trained timestep 999",
        ),
        (lambda: tiny_pipeline({}).sampler_options("pndm", num_inference_steps=2000), "between 1 and 1000"),
    ],
)
def test_bad_options_are_refused_clearly(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_cli_samples_with_dpm_solver(tmp_path, diffusers_checkpoint, capsys):
    from diffusion.sample import main

    path, _ = diffusers_checkpoint
    out = tmp_path / "grid.png"
    assert main(["--model", str(path), "--sampler", "dpm-solver++", "--steps", "5", "--spacing", "trailing", "-n", "2",
                 "--option", "solver_order=3", "--out", str(out), "--device", "cpu"]) == 0
    assert out.exists() and "solver_order=3" in capsys.readouterr().out
    assert main(["--model", str(path), "--sampler", "euler", "--clip", "--out", str(out)]) == 2
    assert "Sampler 'euler' has no option 'clip_sample'" in capsys.readouterr().err
