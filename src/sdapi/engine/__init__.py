"""The engine: runs real Hugging Face diffusers pipelines for the workers.

- `schedulers`: the wire's scheduler names and the diffusers classes behind them (torch-free).
- `models`: where a model comes from (built-in tiny model, local folder, hub repo id) and loading.
- `tiny`: the built-in `sdapi-tiny` model, generated offline from small configs.
- `engine`: `Engine`, one loaded model that turns a `GenerationRequest` into images.

Importing this package, or `sdapi.engine.schedulers`, must not import torch or diffusers: the API
process reads the scheduler names and has to start in about a second. Heavy imports happen inside
the functions that need them.
"""

from __future__ import annotations
