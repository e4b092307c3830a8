"""The engine: runs real Hugging Face diffusers pipelines for the workers.

- `families`: SD 1.x/2.x ("sd"), SDXL and SD3, told from a pipeline or its folder (torch-free).
- `schedulers`: the wire's scheduler names, the diffusers classes behind them per family, and
  the validation of scheduler options (torch-free).
- `models`: where a model comes from (built-in tiny model, local folder, hub repo id), its family
  without loading it (torch-free), and loading.
- `tiny`: the built-in `sdapi-tiny`, `sdapi-tiny-sdxl` and `sdapi-tiny-sd3` models, generated
  offline from small configs.
- `engine`: `Engine`, one loaded model that turns a `GenerationRequest` into images.

Importing this package, or `sdapi.engine.schedulers`, `.families` or `.models`, must not import
torch or diffusers: the API process validates requests with them and has to start in about a
second. Heavy imports happen inside
the functions that need them.
"""

from __future__ import annotations
