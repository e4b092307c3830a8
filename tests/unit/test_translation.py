"""Prompt translation without a model: language detection's decisions, `--translator`
references, and what never loads the model (English, empty and unknown prompts)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from sdapi.catalog.translators import (
    ENGLISH,
    LANGUAGES,
    MBART_CODES,
    TINY_TRANSLATOR_ID,
    check_translator_ref,
)
from sdapi.engine.translation import UNKNOWN, Translation, Translator, detect_language
from sdapi.errors import ConfigurationError

ENGLISH_PROMPTS = [
    "a photo of a cat on a sofa, highly detailed, 8k",
    "portrait of a woman, (masterpiece:1.2), best quality",
    "masterpiece, best quality, 1girl, solo, long hair, looking at viewer, smile",
    "cyberpunk city at night, neon lights, rain, cinematic lighting, octane render",
    "oil painting of a lighthouse in a storm, by greg rutkowski, trending on artstation",
    "a cute corgi wearing sunglasses, studio photo",
    "the quick brown fox jumps over the lazy dog <my-embedding>",
    # Close calls that English must win: another language ahead, but not by enough.
    "vintage car on route 66, desert, retro poster",
    "pizza",
    "mona lisa smiling",
]


@pytest.mark.parametrize("prompt", ENGLISH_PROMPTS)
def test_english_prompts_are_never_translated(prompt: str) -> None:
    assert detect_language(prompt) in (ENGLISH, UNKNOWN)


@pytest.mark.parametrize(
    ("prompt", "language"),
    [
        ("ein Foto einer Katze auf einem Sofa, sehr detailliert", "de"),
        ("Porträt einer alten Frau mit Hut", "de"),
        ("ein Hund im Schnee", "de"),
        ("(Katze:1.3), ein roter Apfel auf dem Tisch, <lora:stil:0.8>", "de"),
        ("une photo d'un chat sur un canapé, très détaillé", "fr"),
        ("portrait d'une vieille femme avec un chapeau", "fr"),
        ("un chien dans la neige", "fr"),
        ("ソファの上の猫の写真", "ja"),
        ("帽子をかぶった老婦人の肖像画", "ja"),
        ("ねこ", "ja"),
        ("una mujer con un sombrero rojo", "es"),
        ("沙发上的猫", "zh"),
        ("소파 위의 고양이 사진", "ko"),
    ],
)
def test_other_languages_are_detected(prompt: str, language: str) -> None:
    assert detect_language(prompt) == language


@pytest.mark.parametrize("prompt", ["", "   ", "1234, ...", "(:1.2) <embedding> [ ]"])
def test_prompts_without_words_are_unknown(prompt: str) -> None:
    assert detect_language(prompt) == UNKNOWN


def test_script_tells_a_lone_han_character() -> None:
    # The statistical model has no features for one character; the script alone decides.
    assert detect_language("猫") == "zh"
    assert detect_language("ねこと猫") == "ja"


def test_the_languages_are_mbart50s() -> None:
    assert len(MBART_CODES) == 52
    assert MBART_CODES[0] == "ar_AR" and MBART_CODES[-1] == "sl_SI"
    assert LANGUAGES["de"] == "de_DE" and LANGUAGES[ENGLISH] == "en_XX"
    assert len(LANGUAGES) == 52  # every two-letter prefix is unique


def test_translation_is_frozen() -> None:
    translation = Translation("a cat", ENGLISH, translated=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        translation.text = "changed"  # type: ignore[misc]


@pytest.mark.parametrize("prompt", ["a photo of a cat on a sofa", "", "1234"])
def test_english_and_unknown_prompts_never_load_the_model(tmp_path: Path, prompt: str) -> None:
    translator = Translator(TINY_TRANSLATOR_ID, tmp_path)
    result = translator.translate(prompt)
    assert result.text == prompt and not result.translated
    assert not translator.loaded
    assert not list(tmp_path.iterdir())  # nothing built either


# --- references ------------------------------------------------------------------------------


def test_builtin_and_hub_refs_pass_unchanged() -> None:
    assert check_translator_ref(TINY_TRANSLATOR_ID) == TINY_TRANSLATOR_ID
    assert check_translator_ref("Helsinki-NLP/opus-mt-mul-en") == "Helsinki-NLP/opus-mt-mul-en"
    assert check_translator_ref("facebook/mbart-large-50-many-to-one-mmt").startswith("facebook/")


@pytest.mark.parametrize("model_type", ["marian", "mbart"])
def test_a_translation_model_folder_passes_resolved(tmp_path: Path, model_type: str) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    assert check_translator_ref(str(tmp_path)) == str(tmp_path.resolve())


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("sdapi-tiny", "is neither sdapi-tiny-translator"),
        ("./no/such/folder", "is neither"),
        ("/no/such/folder", "is neither"),
        ("owner/name/extra", "is neither"),
        ("owner/na me", "is neither"),
        ("", "is neither"),
    ],
)
def test_bad_refs_are_one_line_errors(ref: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as caught:
        check_translator_ref(ref)
    assert "\n" not in str(caught.value)


def test_a_folder_without_a_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"no readable config\.json"):
        check_translator_ref(str(tmp_path))


def test_a_folder_of_another_model_type_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ConfigurationError, match="holds a bert model"):
        check_translator_ref(str(tmp_path))


def test_a_file_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"")
    with pytest.raises(ConfigurationError, match="is neither"):
        check_translator_ref(str(file))


@pytest.mark.parametrize(
    ("ref", "missing"),
    [
        (TINY_TRANSLATOR_ID, "py3langid, sentencepiece"),  # Marian's tokenizer needs it
        ("Helsinki-NLP/opus-mt-de-en", "py3langid, sentencepiece"),
        ("facebook/mbart-large-50-many-to-one-mmt", "py3langid"),  # a fast tokenizer
    ],
)
def test_missing_packages_are_reported_at_check_time(
    monkeypatch: pytest.MonkeyPatch, ref: str, missing: str
) -> None:
    absent = {"py3langid", "sentencepiece"}
    monkeypatch.setattr(
        "sdapi.catalog.translators.find_spec", lambda name: None if name in absent else object()
    )
    with pytest.raises(ConfigurationError, match=f"not installed: {missing}$"):
        check_translator_ref(ref)
