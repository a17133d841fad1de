"""The Arena tab's layout and events (inside :func:`studio.ui.build_app`'s tabs): up to four samplers, the
numbers of model evaluations, N and the seed; the plot, the table, the strip and the downloads (``/arena``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import gradio as gr

from diffusion.samplers import SAMPLERS
from training.arena import ArenaSpec

from .arena import DEFAULT_CONTENDERS, EVALUATION_CHOICES, MAX_SAMPLES, MIN_SAMPLES, SLOTS, ArenaRuns
from .widgets import keep_in_range, progress_and_result, result_picture, run_and_stop_buttons
from .wiring import Runner

NOTE = (
    "Which sampler, at how many model evaluations? Every row starts from the **same N noises** (the seed's). "
    "**RMSE**: how far each sample is from where the sampler's ODE converges (UniPC, order 3, 200 steps from the "
    "same noise: computed once per model and noise, then kept), the error curve of sampler papers; stochastic "
    "samplers (DDPM, DDIM eta > 0, SDE) do not converge to it. **FD, precision, recall**: the offline Fashion-MNIST "
    "classifier's, for 28×28 grey models (FD from 129 samples). Error bars: bootstrap standard deviations; the "
    "table says which sampler is best at each budget and whether beyond the noise. Options are `key=value` items "
    "as on the command line (`solver_order=3 use_karras_sigmas=true`); the rest are the model's scheduler config's. "
    "A class-conditional model draws every class in turn at its recommended guidance."
)


@dataclass
class ArenaTab:
    samplers: list[gr.Dropdown]
    options: list[gr.Textbox]
    evaluations: gr.Dropdown
    n: gr.Slider
    seed: gr.Number

    def link_outputs(self) -> list[Any]:
        return [*self.samplers, *self.options, self.evaluations, self.n, self.seed]

    def link_updates(self, text: str) -> list[Any]:
        """The controls filled in from a link's ``arena`` value (:func:`studio.arena.link`); ValueError if it is
        not one."""
        spec = ArenaSpec.from_dict(json.loads(text))
        slots = list(spec.contenders) + [None] * (SLOTS - len(spec.contenders))
        choices = sorted(set(EVALUATION_CHOICES) | set(spec.budgets))
        return [
            *(gr.update(value=c.sampler if c else "") for c in slots),
            *(gr.update(value=" ".join(f"{k}={v}" for k, v in c.options) if c else "") for c in slots),
            gr.update(choices=choices, value=list(spec.budgets)),
            gr.update(value=min(max(spec.n, MIN_SAMPLES), MAX_SAMPLES)),
            gr.update(value=spec.seed),
        ]


def arena_tab(runs: ArenaRuns, runner: Runner) -> ArenaTab:
    """Build the Arena tab, wired by ``runner`` (``/arena``)."""
    with gr.Tab("Arena", id="arena"):
        gr.Markdown(NOTE, elem_classes="studio-note")
        samplers, options = [], []
        with gr.Row():
            for i in range(SLOTS):
                with gr.Column(min_width=180):
                    default = DEFAULT_CONTENDERS[i] if i < 2 else ""
                    samplers.append(gr.Dropdown([("(none)", ""), *((s.upper(), s) for s in SAMPLERS)], value=default,
                                                label=f"Sampler {i + 1}", elem_id=f"arena-sampler-{i + 1}"))
                    options.append(gr.Textbox("", label=f"Options {i + 1}", placeholder="e.g. solver_order=3",
                                              elem_id=f"arena-options-{i + 1}", max_lines=1))
        with gr.Row(equal_height=True):
            evaluations = gr.Dropdown(list(EVALUATION_CHOICES), value=[5, 10, 20], multiselect=True,
                                      allow_custom_value=True, scale=4, elem_id="arena-evaluations",
                                      label="Model evaluations per sample (each a row per sampler; type others)")
            n = gr.Slider(MIN_SAMPLES, MAX_SAMPLES, value=MIN_SAMPLES, step=1, label="Samples (N)", scale=2,
                          elem_id="arena-n")
            keep_in_range(n, "Samples")
            seed = gr.Number(0, label="Seed", step=1, scale=1, elem_id="arena-seed")
        go, stop = run_and_stop_buttons("Run the arena")
        progress, info = progress_and_result("arena", "Press **Run the arena**: the plot fills in as each row is "
                                             "scored.")
        plot = result_picture("Quality against model evaluations and against seconds", "arena-plot")
        table = gr.Markdown("", elem_id="arena-table")
        strip = result_picture("The first images of each row (top: the converged solution)", "arena-strip")
        files = gr.File(label="Download the rows (JSON, CSV), the plot and the strip", file_count="multiple",
                        interactive=False, elem_id="arena-files")
    slots = {f"sampler_{i + 1}": s for i, s in enumerate(samplers)} | {f"options_{i + 1}": o for i, o in
                                                                       enumerate(options)}
    runner.wire(
        go, stop, runs.run, [plot, strip, table, info, files],
        dict(seed=seed, num_samples=n, evaluations=evaluations, **slots), progress, info,
        api_name="arena",
        api_description="Up to four samplers (sampler_1..sampler_4, empty for none; options_i as key=value items) "
        "at each number of model evaluations, num_samples (64 to 1000) from the seed's noise. Returns the plot, the "
        "strip of first images, the table (Markdown), the result line with a link and the command line, and the "
        "JSON / CSV / PNG files.",
    )
    return ArenaTab(samplers, options, evaluations, n, seed)
