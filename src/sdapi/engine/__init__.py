"""The engine: real Hugging Face diffusers pipelines, imported by workers only.

Everything here may import torch and diffusers at module level: the API process never imports
this package (an import contract in the tests says so); what it needs to know about models
without loading them lives in sdapi.catalog.

- `engine`: `Engine`, one loaded model that turns `GenerationRequest`s into images.
- `models`, `checkpoints`: loading a model (folder, hub repo id, single file, built-in).
- `tiny`: building the built-in tiny models offline.
- `schedulers`: the diffusers scheduler a request's plan names.
- `speed`: the GPU settings and --compile.
- `adapter_loader`, `vae_loader`, `clip_skip`, `token_merging`, `variants`, `passes`, `safety`:
  what the generation options do to a call.
- `upscale`: the x4 upscaler behind super_resolution.
- `cache`: several models loaded at once within a memory budget.
"""

from __future__ import annotations

import os
import warnings

#: Library log levels we force unless the operator set their own (e.g. "info" to debug loading).
_VERBOSITY_VARS = ("DIFFUSERS_VERBOSITY", "TRANSFORMERS_VERBOSITY")
# Set before transformers and diffusers are first imported: transformers warns about the missing
# torchvision at import time.
_FORCED = [var for var in _VERBOSITY_VARS if os.environ.setdefault(var, "error") == "error"]


def quiet_libraries() -> None:
    """Silence diffusers/transformers chatter, warnings and progress bars before loading a
    model; errors still show, and an operator's own DIFFUSERS_VERBOSITY/TRANSFORMERS_VERBOSITY
    wins. Imports them: call it where a model is loaded, not at import (sdapi.engine.cache and
    the worker's loop stay light)."""
    import diffusers.utils.logging
    import transformers.utils.logging

    # Loading/saving bars are noise in a worker's log (hub download bars are huggingface_hub's).
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    # diffusers still passes an argument huggingface_hub deprecated; nothing an operator can fix.
    warnings.filterwarnings("ignore", message="The `local_dir_use_symlinks` argument is deprecated")
    if "DIFFUSERS_VERBOSITY" in _FORCED:
        diffusers.utils.logging.set_verbosity_error()
    if "TRANSFORMERS_VERBOSITY" in _FORCED:
        transformers.utils.logging.set_verbosity_error()
