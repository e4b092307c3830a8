"""Torch-free rules for LoRAs, embeddings, clip_skip and the safety checker: what the API checks."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdapi.catalog.adapters import (
    MAX_LORAS,
    available_embeddings,
    available_loras,
    check_adapters,
    embedding_file,
    lora_file,
    parse_embeddings,
    parse_loras,
)
from sdapi.catalog.work import batch_key
from sdapi.engine.clip_skip import check_clip_skip, is_default, to_diffusers
from sdapi.engine.safety import (
    SAFETY_CHECKER_ENV,
    SAFETY_CHECKER_TYPES,
    check_safety_checker_type,
    checker_source,
    replace_flagged,
)
from sdapi.errors import ConfigurationError
from sdapi.jobs import GenerationRequest
from tests.helpers import make_request

# --- parsing the wire ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "strength", "expected"),
    [
        (None, None, ()),
        ("", "0.5", ()),  # a strength without a LoRA is ignored
        ("  ", None, ()),
        ("more_details", None, (("more_details", 1.0),)),
        ("more_details", "", (("more_details", 1.0),)),
        ("a,b", None, (("a", 1.0), ("b", 1.0))),
        ("a, b", "0.5", (("a", 0.5), ("b", 0.5))),
        ("a,b", "0.5, 1.25", (("a", 0.5), ("b", 1.25))),
        ("x.v1-5", "2", (("x.v1-5", 2.0),)),
    ],
)
def test_parse_loras(model: str | None, strength: str | None, expected: tuple) -> None:
    assert parse_loras(model, strength) == expected


@pytest.mark.parametrize(
    ("model", "strength", "message"),
    [
        ("a,b", "0.5,0.5,0.5", "3 values for 2 LoRAs"),
        ("a,b,c", "0.5,0.5", "2 values for 3 LoRAs"),
        ("a", "strong", "'strong' is not a number"),
        ("a", "nan", "not a finite number"),
        ("a", "inf", "not a finite number"),
        ("a,,b", None, "empty name"),
        ("a,a", None, "same model twice"),
    ],
)
def test_parse_loras_errors(model: str, strength: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_loras(model, strength)


def test_parse_embeddings() -> None:
    assert parse_embeddings(None) == ()
    assert parse_embeddings("") == ()
    assert parse_embeddings("easynegative") == ("easynegative",)
    assert parse_embeddings("a, b") == ("a", "b")
    with pytest.raises(ValueError, match="twice"):
        parse_embeddings("a,a")


# --- checking against the models folder ----------------------------------------------------------


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    for folder, name in [("loras", "style"), ("loras", "detail.v2"), ("embeddings", "neg")]:
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / f"{name}.safetensors").write_bytes(b"not read here")
    (tmp_path / "loras" / "notes.txt").write_text("ignored")
    return tmp_path


def test_installed_adapters_pass(models_dir: Path) -> None:
    loras = (("style", 0.0), ("detail.v2", 2.0))
    assert check_adapters(models_dir, loras, ("neg",)) is None
    assert check_adapters(models_dir, (), ()) is None
    assert available_loras(models_dir) == ["detail.v2", "style"]
    assert available_embeddings(models_dir) == ["neg"]
    assert available_loras(models_dir / "nowhere") == []


@pytest.mark.parametrize(
    ("loras", "embeddings", "message"),
    [
        ((("missing", 1.0),), (), "LoRA 'missing' is not installed"),
        ((), ("missing",), "embedding 'missing' is not installed"),
        ((("style", 2.5),), (), "out of range"),
        ((("style", -0.5),), (), "out of range"),
        ((("../style", 1.0),), (), "not valid"),
        ((("a/b", 1.0),), (), "not valid"),
        ((), (".hidden",), "not valid"),
        ((), ("/etc/passwd",), "not valid"),
        ((), ("x" * 101,), "not valid"),
        (tuple((f"l{i}", 1.0) for i in range(MAX_LORAS + 1)), (), "at most"),
    ],
)
def test_adapter_problems(
    models_dir: Path, loras: tuple, embeddings: tuple[str, ...], message: str
) -> None:
    problem = check_adapters(models_dir, loras, embeddings)
    assert problem is not None and message in problem
    assert str(models_dir) not in problem  # no server path reaches the client


def test_sd3_takes_no_embeddings(models_dir: Path) -> None:
    assert "sd3" in (check_adapters(models_dir, (), ("neg",), family="sd3") or "")
    assert check_adapters(models_dir, (), ("neg",), family="sdxl") is None


def test_files_never_leave_their_folder(models_dir: Path) -> None:
    assert lora_file(models_dir, "style") == models_dir / "loras" / "style.safetensors"
    assert embedding_file(models_dir, "neg") == models_dir / "embeddings" / "neg.safetensors"
    for bad in ["..", "../x", "a/b", "a\\b", "", ".x", "a b", "ä"]:
        with pytest.raises(ValueError):
            lora_file(models_dir, bad)


# --- clip_skip -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, 1, 2, 8])
def test_clip_skip_in_range(value: int | None) -> None:
    assert check_clip_skip(value) is None


@pytest.mark.parametrize("value", [0, 9, -1, True, 2.0, "2"])
def test_clip_skip_out_of_range(value: object) -> None:
    assert check_clip_skip(value) is not None  # type: ignore[arg-type]


def test_clip_skip_counts_like_the_wire() -> None:
    # Wire 1 is the last layer (diffusers None); wire 2 skips one layer (diffusers 1).
    assert [to_diffusers(v) for v in (None, 1, 2, 8)] == [None, None, 1, 7]
    assert is_default(None) and is_default(1) and not is_default(2)


# --- the safety checker ------------------------------------------------------------------------


def test_safety_checker_types() -> None:
    for kind in SAFETY_CHECKER_TYPES:
        assert check_safety_checker_type(kind) is None
    assert "blur" in (check_safety_checker_type("sepia") or "")


def noise(size: tuple[int, int] = (64, 48)) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


@pytest.mark.parametrize("kind", SAFETY_CHECKER_TYPES)
def test_replacements_hide_the_image(kind: str) -> None:
    image = noise()
    replaced = replace_flagged(image, kind)
    assert replaced.size == image.size and replaced.mode == "RGB"
    before = np.asarray(image, dtype=np.int16)
    after = np.asarray(replaced, dtype=np.int16)
    # Far from the original everywhere on average, and much smoother than the noise.
    assert np.abs(after - before).mean() > 40
    assert np.abs(np.diff(after, axis=1)).mean() < np.abs(np.diff(before, axis=1)).mean() / 2


def test_black_is_black_and_text_has_text() -> None:
    assert not np.asarray(replace_flagged(noise(), "black")).any()
    card = np.asarray(replace_flagged(noise((512, 512)), "sensitive_content_text"))
    assert card.max() == 255 and (card == 0).mean() > 0.8  # white letters on black


def test_pixelate_makes_blocks() -> None:
    pixels = np.asarray(replace_flagged(noise((64, 64)), "pixelate"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) <= 16 * 16
    assert (pixels[:4, :4] == pixels[0, 0]).all()  # 64 px / 16 blocks = 4 px squares


def test_unknown_replacement_is_refused() -> None:
    with pytest.raises(ValueError, match="safety_checker_type"):
        replace_flagged(noise(), "sepia")


def test_a_real_model_without_a_checker_is_refused_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SAFETY_CHECKER_ENV, raising=False)
    with pytest.raises(ConfigurationError, match="no safety checker is installed"):
        checker_source(None, tmp_path, "owner/some-model")


def test_the_operator_s_checker_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "safety_checker"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    monkeypatch.delenv(SAFETY_CHECKER_ENV, raising=False)
    assert checker_source(None, tmp_path, "sdapi-tiny") == str(folder)
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "config.json").write_text("{}")
    monkeypatch.setenv(SAFETY_CHECKER_ENV, str(other))
    assert checker_source(None, tmp_path, "sdapi-tiny") == str(other.resolve())
    assert checker_source("owner/checker", tmp_path, "sdapi-tiny") == "owner/checker"
    with pytest.raises(ConfigurationError, match="neither"):
        checker_source("not a checker!", tmp_path, "sdapi-tiny")


# --- the request carries them --------------------------------------------------------------------


def base_request() -> GenerationRequest:
    return make_request(prompt="p", seed=1)


def test_options_enter_the_batch_key_only_when_set() -> None:
    plain = base_request()
    assert batch_key(plain) == "sdapi-tiny|text2img|64x64|2|default|7.5|None"  # unchanged
    # Defaults and mere presentation choices do not split batches.
    assert batch_key(replace(plain, clip_skip=1)) == batch_key(plain)
    assert batch_key(replace(plain, safety_checker_type="blur")) == batch_key(plain)
    variants = [
        replace(plain, loras=(("a", 1.0),)),
        replace(plain, loras=(("a", 0.5),)),
        replace(plain, loras=(("a", 1.0), ("b", 1.0))),
        replace(plain, embeddings=("e",)),
        replace(plain, clip_skip=2),
        replace(plain, safety_checker=True),
    ]
    keys = {batch_key(plain), *(batch_key(variant) for variant in variants)}
    assert len(keys) == len(variants) + 1
    assert all(key.split("|")[2] == "64x64" for key in keys)  # queue/rows.py reads the size
    # The order of a set does not matter: the engine applies them sorted.
    two = replace(plain, loras=(("b", 1), ("a", 0.5)), embeddings=("y", "x"))
    same = replace(plain, loras=(("a", 0.5), ("b", 1.0)), embeddings=("x", "y"))
    assert batch_key(two) == batch_key(same)


def test_options_survive_json_and_old_json_still_reads() -> None:
    request = replace(
        base_request(),
        loras=(("a", 0.5), ("b", 1.0)),
        embeddings=("e",),
        safety_checker=True,
        safety_checker_type="pixelate",
        clip_skip=2,
    )
    assert GenerationRequest.from_json(request.to_json()) == request
    old = json.loads(base_request().to_json())
    for key in ("loras", "embeddings", "safety_checker", "safety_checker_type", "clip_skip"):
        del old[key]
    assert GenerationRequest.from_json(json.dumps(old)) == base_request()
