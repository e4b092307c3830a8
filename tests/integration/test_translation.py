"""Prompt translation through transformers' real Marian and mBART code: the built-in tiny
translator (built offline, random weights, so its English is gibberish) and a tiny mBART-50
folder made here. The tests check the path, never the language quality."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from sdapi.catalog.translators import ENGLISH, LANGUAGES, TINY_TRANSLATOR_ID
from sdapi.engine.translation import (
    MAX_NEW_TOKENS,
    TINY_SIZES,
    Translator,
    build_tiny_translator,
)
from sdapi.errors import ConfigurationError

pytestmark = [pytest.mark.engine]

GERMAN = "ein Foto einer Katze auf einem Sofa, sehr detailliert"
FRENCH = "une photo d'un chat sur un canapé, très détaillé"
JAPANESE = "ソファの上の猫の写真"


@pytest.fixture(scope="module")
def translator(models_dir: Path) -> Translator:
    translator = Translator(TINY_TRANSLATOR_ID, models_dir)
    translator.load()
    return translator


@pytest.fixture(scope="module")
def tiny_folder(translator: Translator, models_dir: Path) -> Path:
    return models_dir / TINY_TRANSLATOR_ID


def test_a_german_prompt_is_translated(translator: Translator) -> None:
    result = translator.translate(GERMAN)
    assert result.language == "de"
    assert result.translated
    assert result.text.strip() and result.text != GERMAN
    assert translator.translate(FRENCH).text != result.text  # the output follows the input


def test_an_english_prompt_is_left_as_it_is(translator: Translator) -> None:
    prompt = "a photo of a cat on a sofa, highly detailed"
    result = translator.translate(prompt)
    assert (result.text, result.language, result.translated) == (prompt, ENGLISH, False)


def test_the_tiny_translator_takes_every_language(translator: Translator) -> None:
    assert translator.languages == frozenset(LANGUAGES) - {ENGLISH}
    assert translator.translate(JAPANESE).translated


def test_translations_are_deterministic(translator: Translator, models_dir: Path) -> None:
    first = translator.translate(GERMAN)
    assert translator.translate(GERMAN) == first
    assert Translator(TINY_TRANSLATOR_ID, models_dir).translate(GERMAN) == first


def test_concurrent_calls_match_sequential_ones(translator: Translator) -> None:
    prompts = [GERMAN, FRENCH, JAPANESE, "a dog in the snow", GERMAN, FRENCH]
    expected = [translator.translate(prompt) for prompt in prompts]
    with ThreadPoolExecutor(max_workers=len(prompts)) as pool:
        assert list(pool.map(translator.translate, prompts)) == expected


def test_concurrent_first_calls_load_once(models_dir: Path) -> None:
    translator = Translator(TINY_TRANSLATOR_ID, models_dir)
    barrier = threading.Barrier(4)

    def call(prompt: str) -> Any:
        barrier.wait()
        return translator.translate(prompt), id(translator._model)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(call, [GERMAN, FRENCH, GERMAN, FRENCH]))
    assert len({model for _, model in results}) == 1
    assert results[0][0] == results[2][0] and results[1][0] == results[3][0]


def test_a_folder_path_loads_the_same_model(translator: Translator, tiny_folder: Path) -> None:
    from_folder = Translator(str(tiny_folder), Path("/nonexistent-models-dir"))
    assert from_folder.translate(GERMAN) == translator.translate(GERMAN)


def test_tags_stay_in_place_and_weights_do_not_crash(translator: Translator) -> None:
    result = translator.translate("ein Hund <mein-stil> im Schnee, (Katze:1.3), [Sofa]")
    assert result.translated and result.language == "de"
    before, tag, after = result.text.partition("<mein-stil>")
    assert tag and before.strip() and after.strip()


def test_output_length_follows_the_input(models_dir: Path) -> None:
    translator = Translator(TINY_TRANSLATOR_ID, models_dir)
    calls = _spy(translator)
    for prompt in ["ein Hund", GERMAN, "Porträt einer alten Frau mit Hut, " * 80]:
        translator.translate(prompt)
    lengths = [call["input_ids"].shape[1] for call in calls]
    assert [call["max_new_tokens"] for call in calls] == [
        min(MAX_NEW_TOKENS, 2 * length + 8) for length in lengths
    ]
    assert calls[-1]["max_new_tokens"] == MAX_NEW_TOKENS


def test_builds_are_identical_and_atomic(tmp_path: Path, tiny_folder: Path) -> None:
    build_tiny_translator(tmp_path / "a")
    assert build_tiny_translator(tmp_path / "a") == tmp_path / "a"  # already there: kept
    assert _digest(tmp_path / "a") == _digest(tiny_folder)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a"]  # no temporary folder left


def test_a_full_folder_in_the_way_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigurationError, match="is not a translator folder"):
        build_tiny_translator(tmp_path / "x")


# --- Marian variants: one source language, a target other than English ------------------------


def _variant(folder: Path, dest: Path, **tokenizer_config: str) -> Path:
    shutil.copytree(folder, dest)
    config_file = dest / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, **tokenizer_config}))
    return dest


def test_a_one_language_model_leaves_other_languages(tiny_folder: Path, tmp_path: Path) -> None:
    # transformers' converter names the source after the folder: "opus-mt-de" for opus-mt-de-en.
    folder = _variant(tiny_folder, tmp_path / "de-en", source_lang="opus-mt-de")
    translator = Translator(str(folder), tmp_path)
    assert translator.languages == {"de"}
    assert translator.translate(GERMAN).translated
    french = translator.translate(FRENCH)
    assert (french.text, french.language, french.translated) == (FRENCH, "fr", False)


def test_a_model_into_another_language_is_refused(tiny_folder: Path, tmp_path: Path) -> None:
    folder = _variant(tiny_folder, tmp_path / "en-de", target_lang="de")
    with pytest.raises(ConfigurationError, match="translates into 'de', not into English"):
        Translator(str(folder), tmp_path).translate(GERMAN)


def test_an_unreachable_hub_model_is_a_one_line_error(tmp_path: Path) -> None:
    translator = Translator("sdapi-test/no-such-translator", tmp_path)
    with pytest.raises(ConfigurationError, match="cannot load translator") as caught:
        translator.translate(GERMAN)
    assert "\n" not in str(caught.value) and not translator.loaded


# --- mBART-50 many-to-one ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def mbart_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny mBART-50: an in-memory unigram vocabulary (the fast tokenizer needs no
    sentencepiece file) and random weights that never emit special tokens."""
    import torch
    from transformers import (
        GenerationConfig,
        MBart50Tokenizer,
        MBartConfig,
        MBartForConditionalGeneration,
    )

    chars = [chr(code) for code in range(ord("!"), ord("~") + 1)] + list("äöüßéèàç")
    vocab = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0), ("\u2581", -3.0)]
    vocab += [(char, -5.0) for char in chars] + [("\u2581" + char, -4.0) for char in chars]
    tokenizer = MBart50Tokenizer(vocab=vocab)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    config = MBartConfig(
        vocab_size=len(tokenizer),
        **TINY_SIZES,
        max_position_embeddings=600,
        pad_token_id=pad,
        eos_token_id=eos,
        decoder_start_token_id=eos,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = MBartForConditionalGeneration(config)
    special = [tokenizer.cls_token_id, pad, tokenizer.unk_token_id, tokenizer.mask_token_id]
    with torch.no_grad():
        model.final_logits_bias[0, special + list(tokenizer.lang_code_to_id.values())] = -1e4
    model.generation_config = GenerationConfig(
        decoder_start_token_id=eos, eos_token_id=eos, pad_token_id=pad, min_new_tokens=3
    )
    folder = tmp_path_factory.mktemp("mbart")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_mbart_gets_the_source_language_and_english_as_target(
    mbart_folder: Path, tmp_path: Path
) -> None:
    translator = Translator(str(mbart_folder), tmp_path)
    calls = _spy(translator)
    tokenizer = translator._tokenizer
    for prompt, code in [(GERMAN, "de_DE"), (FRENCH, "fr_XX"), (JAPANESE, "ja_XX")]:
        result = translator.translate(prompt)
        assert result.translated and result.text != prompt
        assert calls[-1]["input_ids"][0, 0] == tokenizer.convert_tokens_to_ids(code)
        assert calls[-1]["forced_bos_token_id"] == tokenizer.convert_tokens_to_ids("en_XX")
    assert translator.languages == frozenset(LANGUAGES) - {ENGLISH}


def test_a_model_that_never_stops_is_cut_off(mbart_folder: Path, tmp_path: Path) -> None:
    translator = Translator(str(mbart_folder), tmp_path)
    calls = _spy(translator)
    result = translator.translate("Porträt einer alten Frau mit Hut, " * 80)
    assert result.translated
    # The decoder's start token, then at most MAX_NEW_TOKENS (English's code among them).
    assert calls[-1]["output"].shape[1] == 1 + MAX_NEW_TOKENS


def _spy(translator: Translator) -> list[dict[str, Any]]:
    """Load `translator`; then record each generate call's arguments and output."""
    translator.load()
    calls: list[dict[str, Any]] = []
    model = translator._model
    assert model is not None
    generate = model.generate

    def spy(**kwargs: Any) -> Any:
        output = generate(**kwargs)
        calls.append({**kwargs, "output": output})
        return output

    model.generate = spy  # an instance attribute: this translator's model only
    return calls


def _digest(folder: Path) -> dict[str, str]:
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.iterdir())
    }
