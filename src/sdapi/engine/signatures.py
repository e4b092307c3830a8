"""What a pipeline's `__call__` takes: read once per pipeline class (inspect.signature on every
call showed in a lone request's time)."""

from __future__ import annotations

import functools
import inspect

from diffusers import DiffusionPipeline


def accepts(pipe: DiffusionPipeline, parameter: str) -> bool:
    return parameter in _call_parameters(pipe.__class__)


@functools.cache
def _call_parameters(pipeline_class: type) -> frozenset[str]:
    return frozenset(inspect.signature(pipeline_class.__call__).parameters)
