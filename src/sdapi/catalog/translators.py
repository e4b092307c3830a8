"""Translators for `multi_lingual`, told without loading one (the worker loads and runs them:
sdapi.engine.translation).

`--translator` names a transformers sequence-to-sequence model translating into English: Marian
(`Helsinki-NLP/opus-mt-mul-en`, or a one-language `opus-mt-XX-en`) or mBART-50 many-to-one
(`facebook/mbart-large-50-many-to-one-mmt`), from the hub, a local folder, or the built-in
`sdapi-tiny-translator` (random weights: gibberish, but the real transformers code path runs).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from importlib.util import find_spec
from pathlib import Path
from types import MappingProxyType

from sdapi.errors import ConfigurationError

TINY_TRANSLATOR_ID = "sdapi-tiny-translator"
ENGLISH = "en"
#: mBART-50's language codes, the wire's list for `multi_lingual`.
MBART_CODES = (
    "ar_AR", "cs_CZ", "de_DE", "en_XX", "es_XX", "et_EE", "fi_FI", "fr_XX", "gu_IN", "hi_IN",
    "it_IT", "ja_XX", "kk_KZ", "ko_KR", "lt_LT", "lv_LV", "my_MM", "ne_NP", "nl_XX", "ro_RO",
    "ru_RU", "si_LK", "tr_TR", "vi_VN", "zh_CN", "af_ZA", "az_AZ", "bn_IN", "fa_IR", "he_IL",
    "hr_HR", "id_ID", "ka_GE", "km_KH", "mk_MK", "ml_IN", "mn_MN", "mr_IN", "pl_PL", "ps_AF",
    "pt_XX", "sv_SE", "sw_KE", "ta_IN", "te_IN", "th_TH", "tl_XX", "uk_UA", "ur_PK", "xh_ZA",
    "gl_ES", "sl_SI",
)  # fmt: skip
#: ISO 639-1 code (what a translation's `language` holds) -> mBART-50 code.
LANGUAGES: Mapping[str, str] = MappingProxyType({code[:2]: code for code in MBART_CODES})
#: The model types sdapi knows how to drive (config.json's model_type).
MODEL_TYPES = ("marian", "mbart")
#: What every translator needs (Marian's tokenizer also needs sentencepiece); the `translate`
#: extra installs the detector and sentencepiece, the `engine` extra torch and transformers.
PACKAGES = ("py3langid", "torch", "transformers")
#: The marker of a complete transformers model folder.
CONFIG = "config.json"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$", re.ASCII)
_REPO_HINT = "Helsinki-NLP/opus-mt-mul-en or facebook/mbart-large-50-many-to-one-mmt"


def check_translator_ref(ref: str) -> str:
    """Validate `--translator` without loading anything: the reference, and that the packages
    it needs are installed. Returns it as checked (a folder as an absolute path)."""
    checked, model_type = _resolve_ref(ref)
    _check_installed(PACKAGES + (("sentencepiece",) if model_type == "marian" else ()))
    return checked


def _resolve_ref(ref: str) -> tuple[str, str | None]:
    """The reference as checked, and its model type (None for a hub model not downloaded yet:
    only opus-mt's names tell theirs)."""
    if ref == TINY_TRANSLATOR_ID:
        return ref, "marian"
    path = Path(ref).expanduser()
    if ref.strip() and path.is_dir():  # Path("") is the working directory
        return str(path.resolve()), _folder_model_type(path)
    if path.exists() or ref.startswith(("/", ".", "~")) or not _REPO_ID.match(ref):
        raise ConfigurationError(
            f"translator {ref!r} is neither {TINY_TRANSLATOR_ID}, a transformers translation "
            f"model folder, nor a Hugging Face repo id such as {_REPO_HINT}"
        )
    return ref, "marian" if "opus-mt" in ref.lower() else None


def _folder_model_type(folder: Path) -> str:
    try:
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ConfigurationError(
            f"translator folder {folder} has no readable {CONFIG}: not a transformers model folder"
        ) from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    check_model_type(model_type, folder)
    return str(model_type)


def _check_installed(packages: Sequence[str]) -> None:
    """At start rather than at the first foreign prompt; find_spec imports nothing."""
    missing = [name for name in packages if find_spec(name) is None]
    if missing:
        raise ConfigurationError(
            f"translation needs packages that are not installed: {', '.join(missing)}"
        )


def check_model_type(model_type: object, where: object) -> None:
    if model_type not in MODEL_TYPES:
        raise ConfigurationError(
            f"translator {where} holds a {model_type} model; sdapi translates with Marian "
            f"(opus-mt-*-en) or mBART-50 many-to-one models"
        )
