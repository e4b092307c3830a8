"""What sdapi knows about models without loading one: torch-free, imported by the API and the
workers alike.

- `families`: SD 1.x/2.x ("sd"), SDXL and SD3, told from a pipeline class or a folder.
- `builtins`: the names of the built-in tiny models.
- `registry`: the operator's model registry (models.toml).
- `models`: where a model reference points, and its family and scheduler, from its files.
- `checkpoints`: single-file checkpoints, read from their safetensors header.
- `schedulers`: the wire's scheduler names, the classes behind them per family, their checks.
- `adapters`, `vaes`: LoRAs, embeddings and VAEs installed in the models folder.

The engine (sdapi.engine) does the loading and the running; nothing here imports torch,
diffusers or transformers (an import contract in the tests says so).
"""
