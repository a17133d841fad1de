"""UniPC and DEIS against diffusers' ``UniPCMultistepScheduler`` and ``DEISMultistepScheduler``, step for step on
the same model and noise: every spacing, epsilon and v prediction, orders 1-3, bh1 and bh2, the sigma options;
their model-evaluation counts, their options read from a scheduler config as ``from_config`` reads it, and the
options they refuse."""

from __future__ import annotations

import re

import pytest
import torch
from test_fast_samplers import (  # noqa: F401
    TOL,
    count_calls,
    diffusers_loop,
    make_model,
    our_loop,
    tiny_pipeline,
    unet,  # noqa: F401  (the module's tiny random UNet fixture)
)

from diffusion.samplers import SAMPLERS, get_sampler

pytestmark = pytest.mark.usefixtures("one_thread")


def scheduler(name: str, **config):
    from diffusers import DEISMultistepScheduler, UniPCMultistepScheduler

    return {"unipc": UniPCMultistepScheduler, "deis": DEISMultistepScheduler}[name](**config)


SPACINGS = ("linspace", "leading", "trailing")
SIGMA_OPTIONS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
CASES = [
    # Both samplers' defaults at 10 and 25 steps, every spacing, epsilon and v prediction.
    *[
        (name, n, dict(timestep_spacing=sp, prediction_type=p))
        for name in ("unipc", "deis")
        for n in (10, 25)
        for sp in SPACINGS
        for p in ("epsilon", "v_prediction")
    ],
    # UniPC: orders 1-3 with bh2 and bh1 (bh1 to sigma_min: see test_bh1_lands_on_the_data), the noise-prediction
    # form, the sigma options (and their range), no corrector at some steps, no lower order at the end.
    *[("unipc", n, dict(solver_order=k, timestep_spacing=sp)) for n, sp in ((10, "trailing"), (25, "leading"))
      for k in (1, 3)],
    *[("unipc", n, dict(solver_order=k, solver_type="bh1", final_sigmas_type="sigma_min", prediction_type=p))
      for n in (10, 25) for k in (1, 2, 3) for p in ("epsilon", "v_prediction")],
    *[("unipc", n, dict(solver_order=k, predict_x0=False, final_sigmas_type="sigma_min", timestep_spacing=sp))
      for n, sp in ((10, "linspace"), (25, "trailing")) for k in (1, 2, 3)],
    *[("unipc", n, {kind: True, "prediction_type": p}) for n in (10, 25)
      for kind in SIGMA_OPTIONS for p in ("epsilon", "v_prediction")],
    ("unipc", 10, dict(use_karras_sigmas=True, sigma_min=0.1, sigma_max=40.0, solver_order=3)),
    ("unipc", 25, dict(disable_corrector=[0, 1, 5])),
    ("unipc", 10, dict(lower_order_final=False, final_sigmas_type="sigma_min", solver_order=3)),
    ("unipc", 20, dict(timestep_spacing="leading", steps_offset=1, final_sigmas_type="sigma_min")),
    # DEIS: orders 1 and 3, the sigma options, no lower order at the end.
    *[("deis", n, dict(solver_order=k, timestep_spacing=sp, prediction_type=p))
      for n, sp in ((10, "linspace"), (25, "trailing")) for k in (1, 3) for p in ("epsilon", "v_prediction")],
    *[("deis", n, {kind: True, "prediction_type": p}) for n in (10, 25)
      for kind in SIGMA_OPTIONS for p in ("epsilon", "v_prediction")],
    ("deis", 10, dict(lower_order_final=False, solver_order=3)),
    ("deis", 20, dict(timestep_spacing="leading", steps_offset=1)),
]


def case_id(name: str, steps: int, options: dict) -> str:
    return f"{name}-{steps}-{'-'.join(k if v is True else str(v) for k, v in options.items())}"


@pytest.mark.parametrize("name,steps,options", CASES, ids=[case_id(*c) for c in CASES])
def test_matches_diffusers_step_for_step(unet, name, steps, options):  # noqa: F811
    model = make_model(unet, options.get("prediction_type", "epsilon"))
    x = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(steps))
    reference = scheduler(name, **options)
    x_ref, after, calls = diffusers_loop(reference, model, steps, x)
    ours = our_loop(name, model, steps, x, **options)
    spec = get_sampler(name)
    assert spec.timesteps(1000, spec.make_options(num_inference_steps=steps, **options)) == [
        float(t) for t in reference.timesteps
    ]
    assert len(ours) == steps == calls and all(s.evaluations == 1 for s in ours)
    # Third-order DEIS: diffusers evaluates its log-rho coefficients (differences of nearly equal terms) in
    # float32, ours in float64; its intermediate x differ by up to 1.5e-4, its samples stay within 1e-4.
    step_tol = 2 * TOL if name == "deis" and options.get("solver_order") == 3 else TOL
    assert max((s.x_prev - a).abs().max().item() for s, a in zip(ours[:-1], after[:-1])) <= step_tol
    assert torch.isfinite(x_ref).all() and 0.02 < x_ref.abs().mean() < 5
    # The sample within 1e-4 relative to its largest value.
    assert (ours[-1].x_prev - x_ref).abs().max().item() <= TOL * x_ref.abs().max().item()


def test_steps_chain_and_record_what_the_model_saw(unet):  # noqa: F811
    """Each Step's x_t is the x the model was evaluated at, the previous step's x_prev (UniPC's corrector moves
    x afterwards, before the predictor); t are ints, the last t_prev negative."""
    x = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    model = make_model(unet)
    for name in ("unipc", "deis"):
        steps = our_loop(name, model, 6, x, timestep_spacing="leading")
        assert [s.index for s in steps] == list(range(6)) and steps[-1].t_prev < 0
        assert all(isinstance(s.t, int) and isinstance(s.t_prev, int) for s in steps)
        assert torch.equal(steps[0].x_t, x) and all(torch.equal(a.x_prev, b.x_t) for a, b in zip(steps, steps[1:]))


def test_bh1_lands_on_the_data(unet):  # noqa: F811
    """UniPC bh1 to sigma = 0: diffusers 0.42 multiplies an infinite B(h) by zero there (NaN); ours takes the
    limit, the last step's x0 prediction, and agrees with diffusers on every step before it."""
    model = make_model(unet)
    x = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(4))
    ours = our_loop("unipc", model, 10, x, solver_type="bh1")
    _, after, _ = diffusers_loop(scheduler("unipc", solver_type="bh1"), model, 10, x)
    assert max((s.x_prev - a).abs().max().item() for s, a in zip(ours[:-1], after[:-1])) <= TOL
    assert torch.isfinite(ours[-1].x_prev).all() and torch.equal(ours[-1].x_prev, ours[-1].pred_x0)


@pytest.mark.parametrize("name,options", [("unipc", {}), ("unipc", {"use_karras_sigmas": True}), ("deis", {}),
                                          ("deis", {"solver_order": 3, "use_beta_sigmas": True})])
def test_evaluations_are_the_model_calls(name, options):
    for steps in (1, 2, 3, 5, 13, 30):
        reference = scheduler(name, **options)
        reference.set_timesteps(steps)
        assert count_calls(name, steps, **options) == (steps,) * 3 == (len(reference.timesteps),) * 3


def test_defaults_are_diffusers_and_configs_read_as_from_config():
    """Every option's default is the diffusers scheduler's; a DPM-Solver++ config's solver_type and algorithm_type
    are read as UniPC's and DEIS's from_config read them (bh2; deis and logrho); sigma options come from the config."""
    assert {"unipc", "deis"} <= set(SAMPLERS)
    for name in ("unipc", "deis"):
        ours, config = get_sampler(name).options(), scheduler(name).config
        assert ours.num_inference_steps == 20
        for field in ours.__dataclass_fields__:
            if field in config and field != "num_inference_steps":
                assert getattr(ours, field) == (tuple(config[field]) if field == "disable_corrector" else
                                                config[field]), (name, field)
    dpm_config = {"solver_type": "midpoint", "algorithm_type": "dpmsolver++", "use_karras_sigmas": True,
                  "solver_order": 3}
    unipc, deis = (tiny_pipeline(dpm_config).sampler_options(n) for n in ("unipc", "deis"))
    assert (unipc.solver_type, unipc.solver_order, unipc.use_karras_sigmas) == ("bh2", 3, True)
    assert (deis.algorithm_type, deis.solver_type, deis.solver_order) == ("deis", "logrho", 3)
    assert scheduler("unipc", solver_type="midpoint").config.solver_type == "bh2"  # what diffusers does too
    assert tiny_pipeline({"disable_corrector": [0, 2]}).sampler_options("unipc").disable_corrector == (0, 2)


@pytest.mark.parametrize("name", ["unipc", "deis"])
def test_config_keys_diffusers_would_honour_are_refused(name):
    spec = get_sampler(name)
    defaults = scheduler(name).config
    assert spec.refuses and all(defaults[k] == off for k, off in spec.refuses.items())
    for key, off in spec.refuses.items():
        on = True if off is False else "scheduler"
        with pytest.raises(ValueError, match=re.escape(f"sets {key}={on!r}, which diffusers honours but the "
                                                       f"'{name}' sampler does not")):
            tiny_pipeline({key: on}).sampler_options(name)


@pytest.mark.parametrize(
    "name,options,message",
    [
        ("unipc", dict(solver_type="bh3"), "solver_type='bh3' is not one of 'bh1', 'bh2'"),
        ("unipc", dict(solver_order=4), "solver_order=4 is not one of 1, 2, 3"),
        ("unipc", dict(predict_x0=False), "predict_x0=false cannot land on sigma = 0 .* final_sigmas_type='sigma_min'"),
        ("unipc", dict(lower_order_final=False), "lower_order_final=false .* divides by zero"),
        ("unipc", dict(disable_corrector=[0, -1]), "disable_corrector must list step indices"),
        ("unipc", dict(disable_corrector="first"), "disable_corrector must list step indices"),
        ("unipc", dict(sigma_min=0.0, use_karras_sigmas=True), "sigma_min must be positive"),
        ("unipc", dict(use_karras_sigmas=True, use_beta_sigmas=True), "Only one of"),
        ("unipc", dict(timestep_spacing="quad"), "timestep_spacing='quad' is not one of"),
        ("deis", dict(algorithm_type="sde-deis"), "algorithm_type='sde-deis' is not one of 'deis'"),
        ("deis", dict(solver_order=4), "solver_order=4 is not one of 1, 2, 3"),
        ("deis", dict(final_sigmas_type="zero"), "Sampler 'deis' has no option 'final_sigmas_type'"),
    ],
)
def test_bad_options_are_refused_clearly(name, options, message):
    with pytest.raises(ValueError, match=message):
        get_sampler(name).make_options(**options)


def test_disable_corrector_from_the_command_line():
    assert get_sampler("unipc").make_options(disable_corrector="0, 3").disable_corrector == (0, 3)


def test_unipc_and_deis_in_the_studio_and_the_command_line(studio, pipe, tiny_model, tmp_path, capsys):
    """The studio offers both with their own choices (UniPC's bh1 / bh2, DEIS's logrho) and runs them, one model
    evaluation a step; the command line samples with each."""
    import gradio as gr
    from PIL import Image

    from diffusion.sample import main
    from studio import options

    from conftest import run_all

    with gr.Blocks():
        oc = options.OptionControls(pipe, "unipc")
    assert [v for _, v in oc.controls["solver_type"].choices] == ["bh1", "bh2"]
    assert "disable_corrector" not in oc.controls and "timesteps" not in oc.controls  # lists: library and CLI only
    ups = dict(zip(oc.controls, oc.updates(pipe, "deis")[1:]))
    assert ups["solver_type"]["choices"] == ["logrho"] and ups["solver_order"]["visible"]
    assert not ups["predict_x0"]["visible"]
    for sampler, extra in (("unipc", {"solver_type": "bh1"}), ("deis", {"solver_order": 3})):
        *_, (image, grid, info, traj) = run_all(studio.sample(studio.default_model, sampler, 0, 2, steps=5, **extra))
        assert "5 steps · 5 model evaluations" in info and Image.open(grid).size == (230, 116)
        out = tmp_path / f"{sampler}.png"
        assert main(["--model", tiny_model, "--sampler", sampler, "--steps", "6", "-n", "2", "--out", str(out),
                     "--device", "cpu"]) == 0
        assert out.exists()
