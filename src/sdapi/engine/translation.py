"""Prompt translation for the wire's `multi_lingual: "yes"`: detect the language, then translate.

The v3 API promises "automatic language detection and translation of the prompt" for the 52
languages of mBART-50 (ar_AR ... sl_SI). Workers do it before drawing, when the operator named a
translator (sdapi.catalog.prompts.render; sdapi.catalog.translators checks `--translator`).

- Detection: py3langid (langid.py's maintained fork): a naive Bayes model shipped inside the
  wheel (4.5 MB, no download), deterministic, about 0.1 ms a prompt, restricted here to the 52
  languages. Short prompts are hard for any detector, so English wins every close call: a prompt
  is only translated when another language is clearly ahead (`MIN_CONFIDENCE`, `ENGLISH_MARGIN`).
  Very short prompts in a script that only one of the languages uses (kana, Hangul, Thai, ...)
  are told by their script.
- Translation: a transformers sequence-to-sequence model translating into English: Marian
  (`Helsinki-NLP/opus-mt-mul-en`, or a one-language `opus-mt-XX-en`) or mBART-50 many-to-one
  (`facebook/mbart-large-50-many-to-one-mmt`), from the hub (cached under `<models_dir>/hub`),
  a local folder, or the built-in `sdapi-tiny-translator`: a tiny Marian model with random
  weights and sentencepiece vocabularies trained here on a few lines, so the real transformers
  code path runs offline (its translations are gibberish).
- Prompt syntax: `<...>` tags (embeddings, LoRA tags) are kept verbatim and the text between them
  is translated piece by piece; weights such as "(word:1.2)" go through the model as text and
  may not survive.

The detector loads on the first detection, the model on the first prompt that needs translating.
"""

from __future__ import annotations

import io
import json
import re
import threading
import unicodedata
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from sdapi.catalog.translators import (
    CONFIG,
    ENGLISH,
    LANGUAGES,
    TINY_TRANSLATOR_ID,
    check_model_type,
    check_translator_ref,
)
from sdapi.engine import quiet_libraries
from sdapi.engine.models import loader_error
from sdapi.engine.tiny import seeded
from sdapi.errors import ConfigurationError
from sdapi.folders import build_atomically

if TYPE_CHECKING:
    from py3langid.langid import LanguageIdentifier
    from transformers import MarianMTModel, MarianTokenizer, PreTrainedModel

#: The language of a prompt that cannot be told (empty, a single ambiguous word, only numbers).
UNKNOWN = "unknown"

#: A non-English language must reach this probability to be translated...
MIN_CONFIDENCE = 0.4
#: ...and be this many times as likely as English ("vintage car on route 66": fr 0.39, en 0.33).
ENGLISH_MARGIN = 3.0
#: Input beyond this many tokens is cut (prompts past CLIP's 77 tokens are rare anyway).
MAX_INPUT_TOKENS = 256
#: Output is at most twice the input plus a little, and never more than this.
MAX_NEW_TOKENS = 256

#: Scripts that only one of the 52 languages uses: a word or two in them is enough.
_SCRIPTS = MappingProxyType(
    {
        "HIRAGANA": "ja",
        "KATAKANA": "ja",
        "HANGUL": "ko",
        "THAI": "th",
        "HEBREW": "he",
        "GEORGIAN": "ka",
        "KHMER": "km",
        "MYANMAR": "my",
        "SINHALA": "si",
        "GUJARATI": "gu",
        "TAMIL": "ta",
        "TELUGU": "te",
        "MALAYALAM": "ml",
        "CJK": "zh",  # Han without kana: Japanese nearly always mixes in kana
    }
)
#: Embedding and LoRA tags: never translated, kept where they stand.
_TAG = re.compile(r"<[^<>]*>")
#: Weights "(word:1.2)" and brackets: noise to the detector.
_SYNTAX = re.compile(r":\s*-?\d+(?:\.\d+)?|[()\[\]{}]")
#: What the tiny translator's sentencepiece vocabulary is trained on.
_TINY_CORPUS = (
    "a photo of a cat on a sofa, highly detailed",
    "ein Foto einer Katze auf einem Sofa, sehr detailliert",
    "une photo d'un chat sur un canapé, très détaillé",
    "portrait of an old woman with a hat, oil painting",
    "Porträt einer alten Frau mit Hut, Ölgemälde",
    "portrait d'une vieille femme avec un chapeau, peinture à l'huile",
    "a dog in the snow at sunset",
    "ein Hund im Schnee bei Sonnenuntergang",
    "un chien dans la neige au coucher du soleil",
)


@dataclass(frozen=True)
class Translation:
    """A prompt as the job will hold it.

    `language` is an ISO 639-1 code (`LANGUAGES`), "en", or "unknown"; `translated` is False when
    `text` is the prompt unchanged: English, unknown, a language the model does not translate,
    or a translation that came out empty.
    """

    text: str
    language: str
    translated: bool


# --- detection --------------------------------------------------------------------------------

_detector: LanguageIdentifier | None = None
_detector_lock = threading.Lock()


def detect_language(text: str) -> str:
    """The language of a prompt: a key of `LANGUAGES` ("en" included) or "unknown"."""
    text = _detection_text(text)
    if not text:
        return UNKNOWN
    ranking: list[tuple[str, float]] = _identifier().rank(text)
    best, confidence = ranking[0]
    if best == ENGLISH:
        return ENGLISH
    english = dict(ranking)[ENGLISH]
    if confidence >= MIN_CONFIDENCE and confidence >= ENGLISH_MARGIN * english:
        return best
    return _script_language(text) or UNKNOWN


def _detection_text(text: str) -> str:
    """The words of a prompt, without tags, weights and brackets."""
    return " ".join(_SYNTAX.sub(" ", _TAG.sub(" ", text)).split())


def _identifier() -> LanguageIdentifier:
    """py3langid's model, loaded once (about a second) and shared: ranking is read-only."""
    global _detector
    with _detector_lock:
        if _detector is None:
            from py3langid.langid import MODEL_FILE, LanguageIdentifier

            detector = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
            detector.set_languages(list(LANGUAGES))
            _detector = detector
        return _detector


def _script_language(text: str) -> str | None:
    """The language of a text whose letters are all in one single-language script."""
    scripts = {unicodedata.name(char, "?").split()[0] for char in text if char.isalpha()}
    if scripts & {"HIRAGANA", "KATAKANA"}:
        return "ja"  # kana mixed with Han is Japanese
    languages = {_SCRIPTS.get(script) for script in scripts}
    return languages.pop() if len(languages) == 1 else None


# --- the translator ---------------------------------------------------------------------------


class Translator:
    """One translation model on one device, loaded on first use; calls are serialised (the
    tokenizer's source language is mutable state, and one CPU model gains nothing from two
    concurrent calls)."""

    def __init__(
        self, source: str, models_dir: Path, device: str = "cpu", threads: int | None = None
    ) -> None:
        self.source = source
        self.models_dir = Path(models_dir)
        self.device = device
        #: torch CPU threads, set for the whole process at load (as Engine's); None: torch's.
        self.threads = threads
        self._lock = threading.Lock()
        self._model: PreTrainedModel | None = None
        self._tokenizer: Any = None
        self._languages: frozenset[str] = frozenset()
        self._mbart = False
        #: A model that failed to load is not tried again for every prompt (a hub model that
        #: cannot be downloaded would cost each job the attempt); a restart tries again.
        self._failure: str | None = None

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def languages(self) -> frozenset[str]:
        """What the model translates from (ISO 639-1 codes); loads the model."""
        with self._lock:
            self._load_locked()
            return self._languages

    def load(self) -> None:
        """Load the detector and the model now (a built-in one is built first)."""
        _identifier()
        with self._lock:
            self._load_locked()

    def translate(self, text: str) -> Translation:
        """`text` in English, with the language it was detected in."""
        language = detect_language(text)
        if language in (ENGLISH, UNKNOWN):
            return Translation(text, language, translated=False)  # never loads the model
        with self._lock:
            self._load_locked()
            if language not in self._languages:
                return Translation(text, language, translated=False)
            english = self._translate_locked(text, language)
        if not english.strip() or english == text:
            return Translation(text, language, translated=False)
        return Translation(english, language, translated=True)

    # --- loading ---

    def _load_locked(self) -> None:
        if self._model is not None:
            return
        if self._failure is not None:
            raise ConfigurationError(self._failure)
        try:
            self._load_model_locked()
        except Exception as exc:
            self._failure = f"the translator cannot be loaded: {exc}"
            raise

    def _load_model_locked(self) -> None:
        quiet_libraries()
        import torch

        if self.threads is not None:
            torch.set_num_threads(self.threads)  # on a busy CPU, 1 thread beats 2 tenfold
        dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        model, tokenizer = self._load_model(dtype)
        self._check(model, tokenizer)
        self._mbart = model.config.model_type == "mbart"
        self._languages = _model_languages(tokenizer, self._mbart)
        self._tokenizer = tokenizer
        self._model = model

    def _load_model(self, dtype: Any) -> tuple[PreTrainedModel, Any]:
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        source = check_translator_ref(self.source)
        if source == TINY_TRANSLATOR_ID:
            source = str(build_tiny_translator(self.models_dir / TINY_TRANSLATOR_ID))
        cache = self.models_dir / "hub"
        try:
            with warnings.catch_warnings():
                # Marian's optional punctuation normaliser; translation works without it.
                warnings.filterwarnings("ignore", message="Recommended: pip install sacremoses")
                tokenizer = AutoTokenizer.from_pretrained(source, cache_dir=cache)
            model = AutoModelForSeq2SeqLM.from_pretrained(source, cache_dir=cache, dtype=dtype)
            model.to(self.device).eval()
        except Exception as exc:  # one line for the log and the start-up error, as models.py does
            raise ConfigurationError(
                f"cannot load translator {self.source!r}: {loader_error(exc)}"
            ) from exc
        return model, tokenizer

    def _check(self, model: PreTrainedModel, tokenizer: Any) -> None:
        check_model_type(model.config.model_type, repr(self.source))
        target = getattr(tokenizer, "target_lang", None)
        if model.config.model_type == "marian" and target not in (None, ENGLISH, "eng"):
            raise ConfigurationError(
                f"translator {self.source!r} translates into {target!r}, not into English"
            )

    # --- translating ---

    def _translate_locked(self, text: str, language: str) -> str:
        """Translate the text between tags, all pieces in one batch; tags stay where they are."""
        pieces = _TAG.split(text)
        tags = _TAG.findall(text)
        wanted = [i for i, piece in enumerate(pieces) if any(c.isalpha() for c in piece)]
        if not wanted:
            return text
        english = self._generate([pieces[i].strip() for i in wanted], language)
        for i, translated in zip(wanted, english, strict=True):
            pieces[i] = _keep_spacing(pieces[i], translated.strip())
        out = [pieces[0]]
        for tag, piece in zip(tags, pieces[1:], strict=True):
            out += [tag, piece]
        return "".join(out).strip()

    def _generate(self, texts: Sequence[str], language: str) -> list[str]:
        import torch

        tokenizer, model = self._tokenizer, self._model
        assert model is not None
        extra: dict[str, Any] = {}
        if self._mbart:
            tokenizer.src_lang = LANGUAGES[language]
            extra["forced_bos_token_id"] = tokenizer.convert_tokens_to_ids(LANGUAGES[ENGLISH])
        batch = tokenizer(
            list(texts),
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=MAX_INPUT_TOKENS,
        ).to(self.device)
        longest = int(batch["input_ids"].shape[1])
        with torch.inference_mode():
            output = model.generate(**batch, max_new_tokens=_max_new_tokens(longest), **extra)
        english: list[str] = tokenizer.batch_decode(output, skip_special_tokens=True)
        return english


def _max_new_tokens(input_tokens: int) -> int:
    """A translation is rarely much longer than its source; this bounds a looping model."""
    return min(MAX_NEW_TOKENS, 2 * input_tokens + 8)


def _keep_spacing(original: str, translated: str) -> str:
    """`translated` with the whitespace that surrounded `original` (so tags stay separated)."""
    lead = original[: len(original) - len(original.lstrip())]
    trail = original[len(original.rstrip()) :]
    return lead + translated + trail


def _model_languages(tokenizer: Any, mbart: bool) -> frozenset[str]:
    """mBART-50 and multilingual Marian models take every language; opus-mt-XX-en only XX.

    transformers' Marian converter names the source after the folder: "opus-mt-de" for
    opus-mt-de-en, "opus-mt-mul" for opus-mt-mul-en (a group such as "mul" or "roa" is not one
    of the two-letter codes, so it takes every language).
    """
    every = frozenset(LANGUAGES) - {ENGLISH}
    source = getattr(tokenizer, "source_lang", None)
    if mbart or not isinstance(source, str):
        return every
    code = source.rsplit("-", 1)[-1]
    return frozenset({code}) if code in every else every


# --- the built-in tiny translator -------------------------------------------------------------


def build_tiny_translator(dest: Path) -> Path:
    """Build `sdapi-tiny-translator` into `dest` unless it is there (atomically, as the tiny
    models: sdapi.folders); returns `dest`."""
    return build_atomically(
        dest, CONFIG, _save_tiny_translator, "a translator folder", TINY_TRANSLATOR_ID
    )


def _save_tiny_translator(folder: Path) -> None:
    quiet_libraries()
    tokenizer = _tiny_tokenizer(folder)
    model = seeded(lambda: _tiny_model(tokenizer))
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def _tiny_tokenizer(folder: Path) -> MarianTokenizer:
    """A MarianTokenizer over a sentencepiece model trained on `_TINY_CORPUS` (deterministic:
    one thread, fixed input), used for both sides as opus-mt's shared vocabularies are."""
    import sentencepiece
    from transformers import MarianTokenizer

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_TINY_CORPUS),
        model_writer=model,
        model_type="unigram",
        vocab_size=200,
        hard_vocab_limit=False,  # the corpus holds fewer pieces; take what there is
        character_coverage=1.0,
        normalization_rule_name="identity",
        num_threads=1,
        unk_id=0,
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        minloglevel=2,
    )
    processor = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())
    pieces = [processor.id_to_piece(i) for i in range(1, processor.get_piece_size())]
    # opus-mt's layout: </s> 0, <unk> 1, the pieces, <pad> last.
    vocab = {piece: i for i, piece in enumerate(["</s>", "<unk>", *pieces, "<pad>"])}
    for name in ("source.spm", "target.spm"):
        (folder / name).write_bytes(model.getvalue())
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Recommended: pip install sacremoses")
        return MarianTokenizer(
            *(str(folder / name) for name in ("source.spm", "target.spm", "vocab.json")),
            target_lang=ENGLISH,
        )


#: The tiny translator's layers (any sequence-to-sequence config takes these names).
TINY_SIZES: Mapping[str, int] = MappingProxyType(
    {
        "d_model": 32,
        "encoder_layers": 1,
        "decoder_layers": 1,
        "encoder_attention_heads": 2,
        "decoder_attention_heads": 2,
        "encoder_ffn_dim": 37,
        "decoder_ffn_dim": 37,
    }
)


def _tiny_model(tokenizer: MarianTokenizer) -> MarianMTModel:
    import torch
    from transformers import GenerationConfig, MarianConfig, MarianMTModel

    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    config = MarianConfig(
        vocab_size=len(tokenizer),
        **TINY_SIZES,
        max_position_embeddings=MAX_INPUT_TOKENS + MAX_NEW_TOKENS,
        pad_token_id=pad,
        eos_token_id=eos,
        decoder_start_token_id=pad,  # Marian starts decoding from <pad>
        forced_eos_token_id=eos,
        # At the usual 0.02 the decoder ignores the encoder: every prompt gave the same words.
        init_std=0.5,
    )
    model = MarianMTModel(config)
    with torch.no_grad():
        model.final_logits_bias[0, eos] = 4.0  # ends most answers early, as a real model does
    # Greedy, as cheap as it gets. At least a few visible pieces, so it never answers "".
    space = tokenizer.convert_tokens_to_ids("\u2581")
    model.generation_config = GenerationConfig(
        decoder_start_token_id=pad,
        eos_token_id=eos,
        pad_token_id=pad,
        forced_eos_token_id=eos,
        bad_words_ids=[[pad], [tokenizer.unk_token_id], [space]],
        num_beams=1,
        min_new_tokens=3,
    )
    return model
