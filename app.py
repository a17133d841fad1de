"""DDPM / DDIM Studio: the entry point (Hugging Face Spaces runs ``python app.py``).

The studio lives in the ``studio`` package: settings, models, options, runs, media, handlers, ui, main.
Run ``python app.py`` (offline, with the bundled ``checkpoints/fashion-mnist``) or ``python app.py --help``.

Environment: ``DEFAULT_MODEL`` (model folder or Hub id), ``CPU_CORES`` (torch threads), ``MAX_WORK``
(CPU budget in pixel-steps), ``MAX_MODELS`` (models kept loaded), ``QUEUE_SIZE``, ``PREVIEW_EVERY``
(seconds between streamed previews), ``ALLOW_LOCAL_MODELS=1`` (accept any local folder), ``COMPILE=0``
(never use ahead-of-time compiled UNets), ``KEEP_OUTPUTS`` (request folders kept in the temp folder).
"""

from studio.main import main

if __name__ == "__main__":
    main()
