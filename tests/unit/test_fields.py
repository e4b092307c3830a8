"""Lenient v3 field reading: strings for numbers, yes/no flags, absent values, Laravel errors."""

from __future__ import annotations

import pytest

from sdapi.api.v3.fields import read_fields
from sdapi.api.v3.protocol import read_generation
from sdapi.errors import ValidationFailed
from sdapi.fields import Field
from sdapi.jobs import Task
from sdapi.settings import Settings

FIELDS = [
    Field("prompt", "str", required=True),
    Field("width", "int", default=512, minimum=64, maximum=1024, multiple_of=8),
    Field("guidance_scale", "float", default=7.5, minimum=1, maximum=20),
    Field("instant_response", "flag", default=False),
    Field("num_inference_steps", "int", default=20, minimum=1, maximum=50, aliases=("steps",)),
]


def errors_of(body: dict[str, object]) -> dict[str, list[str]]:
    with pytest.raises(ValidationFailed) as info:
        read_fields(body, FIELDS)
    assert isinstance(info.value.message, dict)
    return dict(info.value.message)  # type: ignore[arg-type]


def test_numbers_as_strings_and_flags_as_words() -> None:
    values = read_fields(
        {"prompt": "x", "width": "256", "guidance_scale": "7", "instant_response": "yes"}, FIELDS
    )
    assert values == {
        "prompt": "x",
        "width": 256,
        "guidance_scale": 7.0,
        "instant_response": True,
        "num_inference_steps": 20,
    }


@pytest.mark.parametrize("absent", [None, "", "null", "NULL", " "])
def test_absent_spellings_take_the_default(absent: object) -> None:
    values = read_fields({"prompt": "x", "width": absent, "instant_response": absent}, FIELDS)
    assert values["width"] == 512 and values["instant_response"] is False


@pytest.mark.parametrize(
    ("raw", "flag"),
    [(True, True), ("no", False), ("false", False), ("TRUE", True), (1, True), ("0", False)],
)
def test_flag_spellings(raw: object, flag: bool) -> None:
    assert read_fields({"prompt": "x", "instant_response": raw}, FIELDS)["instant_response"] is flag


def test_alias_and_integral_float() -> None:
    values = read_fields({"prompt": "x", "steps": "30", "width": 256.0}, FIELDS)
    assert values["num_inference_steps"] == 30 and values["width"] == 256


def test_missing_prompt_is_the_laravel_message() -> None:
    assert errors_of({}) == {"prompt": ["The prompt field is required."]}


def test_every_error_is_reported_at_once() -> None:
    errors = errors_of(
        {
            "prompt": "x",
            "width": "100",
            "guidance_scale": "loud",
            "instant_response": "maybe",
            "steps": "2.5",
        }
    )
    assert errors == {
        "width": ["The width must be a multiple of 8."],
        "guidance_scale": ["The guidance scale must be a number."],
        "instant_response": ["The instant response field must be yes or no."],
        "num_inference_steps": ["The num inference steps must be an integer."],
    }


@pytest.mark.parametrize("value", ["2048", 0, -8, "nan", "inf", True, [512], {"a": 1}])
def test_out_of_range_and_wrong_types_are_refused(value: object) -> None:
    assert "width" in errors_of({"prompt": "x", "width": value})


def test_prompt_must_be_text() -> None:
    assert errors_of({"prompt": ["a"]}) == {"prompt": ["The prompt must be a string."]}


def test_generation_reads_image_fields_only_where_the_task_needs_them() -> None:
    settings = Settings()
    body = {"prompt": "p", "init_image": "aGk=", "mask_image": "aGk=", "seed": "-1"}
    t2i = read_generation(body, settings, Task.TEXT2IMG)
    assert t2i.init_image is None and t2i.mask_image is None and t2i.seed is None
    i2i = read_generation(body, settings, Task.IMG2IMG)
    assert i2i.init_image == "aGk=" and i2i.mask_image is None
    with pytest.raises(ValidationFailed) as info:
        read_generation({"prompt": "p"}, settings, Task.INPAINT)
    assert info.value.message == {
        "init_image": ["The init image field is required."],
        "mask_image": ["The mask image field is required."],
    }


def test_seed_keeps_full_64_bit_precision() -> None:
    big = 2**64 - 1
    params = read_generation({"prompt": "p", "seed": str(big)}, Settings(), Task.TEXT2IMG)
    assert params.seed == big
    with pytest.raises(ValidationFailed):
        read_generation({"prompt": "p", "seed": str(big + 1)}, Settings(), Task.TEXT2IMG)


def test_unknown_scheduler_is_refused() -> None:
    with pytest.raises(ValidationFailed) as info:
        read_generation({"prompt": "p", "scheduler": "FancyScheduler"}, Settings(), Task.TEXT2IMG)
    assert info.value.message == {"scheduler": ["The selected scheduler is invalid."]}


def test_known_but_unsupported_scheduler_says_why() -> None:
    with pytest.raises(ValidationFailed) as info:
        read_generation(
            {"prompt": "p", "scheduler": "DDIMInverseScheduler"}, Settings(), Task.TEXT2IMG
        )
    [text] = info.value.message["scheduler"]  # type: ignore[index]
    assert text.startswith("The scheduler DDIMInverseScheduler is not supported: inversion only")
