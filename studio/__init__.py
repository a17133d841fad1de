"""DDPM / DDIM Studio: a Gradio 6 app over the ``diffusion`` library, one concern a module.

settings (limits, read in ``main``), models (loading and the work budget), options (sampler options
from widgets), runs (one sampler run, timed and recorded), media (pictures, files, the temp folder),
handlers (what each button does, testable without a server), ui (the Blocks layout), main (start-up).
"""
