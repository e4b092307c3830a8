"""A request field as every wire declares it: its name, kind, default, rules and description.

The declaration only: each wire reads its fields its own way (the ModelsLab wires leniently, with
Laravel's messages: sdapi.api.v3.fields), and the OpenAPI documents are made from the same
declarations. The generation options declare theirs in sdapi.catalog.options.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["str", "int", "float", "flag"]


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    kind: Kind
    default: Any = None
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None
    multiple_of: int | None = None
    choices: Collection[str] | None = None
    #: Other names clients use for the same field (the inpaint pages say `steps`).
    aliases: tuple[str, ...] = ()
    max_length: int | None = None
    description: str = ""

    @property
    def label(self) -> str:
        # Laravel names the attribute with spaces: "num_inference_steps" -> "num inference steps".
        return self.name.replace("_", " ")
