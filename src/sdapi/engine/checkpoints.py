"""Loading a single-file checkpoint (sdapi.catalog.checkpoints reads and checks them) through
diffusers' `from_single_file` of the family's pipeline class, given a local diffusers folder of
the base model for everything the file lacks (scheduler and tokenizer files, component
configs), so nothing is ever downloaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import diffusers
from diffusers import DiffusionPipeline

from sdapi.catalog.checkpoints import PIPELINES
from sdapi.catalog.families import SD, Family


def load_single_file(
    path: Path, family: Family, config_folder: Path, dtype: Any
) -> DiffusionPipeline:
    """The `family` text2img pipeline from checkpoint `path`, offline: every config (and any
    component the file lacks, such as an SD3 file without its text encoders) comes from the
    local diffusers folder `config_folder`."""
    pipeline_class = getattr(diffusers, PIPELINES[family])
    # Only SD 1.x/2.x pipelines have a safety checker: never load it (as for folders).
    extra = {"safety_checker": None, "requires_safety_checker": False} if family == SD else {}
    return pipeline_class.from_single_file(
        str(path),
        config=str(config_folder),
        local_files_only=True,  # with a local config folder, diffusers has nothing to fetch
        dtype=dtype,
        **extra,
    )
