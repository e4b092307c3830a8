"""The prompt a job is stored with: translated (`multi_lingual`), styled (`enhance_style`) and
enhanced (`enhance_prompt`), in that order, so the style's and the quality words stay English.

Done at submit time (in the request's worker thread: translation runs a model), so the stored
request is exactly what the model draws and the answer's meta shows it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdapi.api.v3.options import Options
from sdapi.prompting import apply_style, enhance
from sdapi.translation import Translator

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Rewritten:
    prompt: str
    negative_prompt: str
    #: What the answer's meta shows beside the prompt (the detected language, notes).
    echo: dict[str, Any] = field(default_factory=dict)


#: Torch threads for translation in the API process: prompts are short, and several request
#: threads may translate at once; more threads per call only contend (measured: 10x slower
#: with 2 threads than with 1 on a busy 2-core machine).
TRANSLATOR_THREADS = 1


class PromptWriter:
    """Rewrites prompts; loads the translator on the first multi_lingual request."""

    def __init__(self, translator: str, models_dir: Path) -> None:
        self._source = translator
        self._models_dir = models_dir
        self._translator: Translator | None = None
        #: A translator that failed to load is not tried again on every request (a hub model
        #: that cannot be downloaded would cost each one the attempt); a restart tries again.
        self._failure: str | None = None
        self._lock = threading.Lock()

    def rewrite(self, prompt: str, negative_prompt: str, options: Options) -> Rewritten:
        echo: dict[str, Any] = {}
        if options.multi_lingual:
            prompt, negative_prompt = self._translate(prompt, negative_prompt, echo)
        if options.enhance_style:
            prompt, negative_prompt = apply_style(options.enhance_style, prompt, negative_prompt)
            echo["enhance_style"] = options.enhance_style
        if options.enhance_prompt:
            prompt = enhance(prompt)
            echo["enhance_prompt"] = True
        return Rewritten(prompt, negative_prompt, echo)

    def _translate(self, prompt: str, negative: str, echo: dict[str, Any]) -> tuple[str, str]:
        """Both prompts in English; on a translator failure the prompts as given, and a note
        (the job still runs: the client asked for a picture, not for a translation)."""
        try:
            translator = self._get()
            translation = translator.translate(prompt)
            negative = translator.translate(negative).text if negative.strip() else negative
        except Exception as exc:  # a model that fails to load or run: reported, not a 500
            log.warning("multi_lingual: the translator failed: %s", exc)
            echo["notes"] = {"multi_lingual": f"multi_lingual was not applied: {exc}"}
            return prompt, negative
        echo["language"] = translation.language
        echo["multi_lingual"] = translation.translated
        return translation.text, negative

    def _get(self) -> Translator:
        with self._lock:
            if self._failure is not None:
                raise RuntimeError(self._failure)
            if self._translator is None:
                translator = Translator(self._source, self._models_dir, threads=TRANSLATOR_THREADS)
                try:
                    translator.load()
                except Exception as exc:
                    self._failure = f"the translator cannot be loaded: {exc}"
                    raise RuntimeError(self._failure) from exc
                self._translator = translator
            return self._translator
