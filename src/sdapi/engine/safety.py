"""The NSFW safety checker: which checker runs, and what a flagged image becomes.

A request with `safety_checker` on has its finished images checked by diffusers'
`StableDiffusionSafetyChecker` (a CLIP vision model with concept embeddings) and its
`CLIPImageProcessor`, loaded once per process apart from the pipeline, so it serves every family
(SD 1.x/2.x, SDXL, SD3). A flagged image is replaced according to `safety_checker_type`:

- `black`: an all-black image (what diffusers itself returns);
- `blur`: a strong Gaussian blur (radius 1/8 of the longer side);
- `pixelate`: 16 coarse blocks across the longer side;
- `sensitive_content_text`: black with "Sensitive content" written in the middle.

Which checker (first match):

1. the `safety_checker` argument of the Engine, else the `SDAPI_SAFETY_CHECKER` environment
   variable: a folder, a Hugging Face repo id (cached under `<models_dir>/hub`), or a built-in id;
2. `<models_dir>/safety_checker/`: a folder with `config.json`, the weights and
   `preprocessor_config.json`, i.e. the CompVis/stable-diffusion-safety-checker layout;
3. for the built-in tiny models only, the built-in `sdapi-tiny-checker`.

Otherwise a request asking for the checker fails with a clear message: it is never skipped
silently. The built-ins are generated offline like the tiny models: `sdapi-tiny-checker` never
flags anything (its concept weights are 1 and a cosine similarity never exceeds 1), and
`sdapi-tiny-checker-flag-all` flags every image (weights -1); tests and demos force the NSFW path
with the latter, e.g. `SDAPI_SAFETY_CHECKER=sdapi-tiny-checker-flag-all`.

The module imports no torch: the API validates `safety_checker_type` with it.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from PIL import Image, ImageDraw, ImageFilter, ImageFont

from sdapi.catalog.builtins import BUILTIN_MODELS
from sdapi.errors import ConfigurationError
from sdapi.folders import build_atomically

if TYPE_CHECKING:
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

BLACK: Final = "black"
BLUR: Final = "blur"
PIXELATE: Final = "pixelate"
SENSITIVE_CONTENT_TEXT: Final = "sensitive_content_text"
#: Every `safety_checker_type` the wire may send.
SAFETY_CHECKER_TYPES: Final = (BLACK, BLUR, PIXELATE, SENSITIVE_CONTENT_TEXT)
DEFAULT_SAFETY_CHECKER_TYPE: Final = BLACK

#: Chooses the checker when the Engine is not given one (see the module docstring).
SAFETY_CHECKER_ENV: Final = "SDAPI_SAFETY_CHECKER"
#: The operator's checker, inside the models folder.
SAFETY_CHECKER_DIR: Final = "safety_checker"
TINY_CHECKER_ID: Final = "sdapi-tiny-checker"
FLAG_ALL_CHECKER_ID: Final = "sdapi-tiny-checker-flag-all"
BUILTIN_CHECKERS: Final = (TINY_CHECKER_ID, FLAG_ALL_CHECKER_ID)

#: Blur radius and pixel block size, as fractions of the image's longer side.
_BLUR_FRACTION: Final = 1 / 8
_PIXELATE_BLOCKS: Final = 16
_TEXT: Final = "Sensitive\ncontent"
_CONFIG: Final = "config.json"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$", re.ASCII)


def check_safety_checker_type(value: str) -> str | None:
    """Why `value` is not a `safety_checker_type`, or None."""
    if value in SAFETY_CHECKER_TYPES:
        return None
    return f"safety_checker_type must be one of {', '.join(SAFETY_CHECKER_TYPES)} (got {value!r})"


def replace_flagged(image: Image.Image, kind: str) -> Image.Image:
    """What a flagged `image` becomes: the same size, its content hidden the `kind` way."""
    if kind == BLUR:
        radius = max(2.0, max(image.size) * _BLUR_FRACTION)
        return image.convert("RGB").filter(ImageFilter.GaussianBlur(radius))
    if kind == PIXELATE:
        return _pixelate(image.convert("RGB"))
    if kind == SENSITIVE_CONTENT_TEXT:
        return _text_card(image.size)
    if kind == BLACK:
        return Image.new("RGB", image.size)
    raise ValueError(check_safety_checker_type(kind))


def _pixelate(image: Image.Image) -> Image.Image:
    block = max(1, max(image.size) // _PIXELATE_BLOCKS)
    small = (max(1, -(-image.width // block)), max(1, -(-image.height // block)))
    coarse = image.resize(small, Image.Resampling.BOX)
    return coarse.resize(image.size, Image.Resampling.NEAREST)


def _text_card(size: tuple[int, int]) -> Image.Image:
    card = Image.new("RGB", size)
    draw = ImageDraw.Draw(card)
    # Pillow's own font (no file to ship); without FreeType it is a fixed small bitmap font.
    font = ImageFont.load_default(max(8, min(size) // 6))
    left, top, right, bottom = draw.multiline_textbbox((0, 0), _TEXT, font=font, align="center")
    origin = ((size[0] - (right - left)) / 2 - left, (size[1] - (bottom - top)) / 2 - top)
    draw.multiline_text(origin, _TEXT, fill=(255, 255, 255), font=font, align="center")
    return card


# --- which checker -------------------------------------------------------------------------------


def checker_source(reference: str | None, models_dir: Path, model: str) -> str:
    """What to load as the checker for `model`: a folder path or a hub repo id.

    `reference` is the Engine's setting; None falls back to SDAPI_SAFETY_CHECKER, then to the
    models folder, then (tiny models only) to the built-in checker. Builds a built-in on first
    use. ConfigurationError when there is no checker, or the reference is neither.
    """
    models_dir = Path(models_dir)
    reference = reference or os.environ.get(SAFETY_CHECKER_ENV, "").strip() or None
    if reference is None:
        folder = models_dir / SAFETY_CHECKER_DIR
        if (folder / _CONFIG).is_file():
            return str(folder)
        if model not in BUILTIN_MODELS:
            raise ConfigurationError(
                "safety_checker was asked for, but no safety checker is installed: put one "
                f"(e.g. CompVis/stable-diffusion-safety-checker) in the models folder's "
                f"{SAFETY_CHECKER_DIR}/ or set {SAFETY_CHECKER_ENV}"
            )
        reference = TINY_CHECKER_ID
    if reference in BUILTIN_CHECKERS:
        return str(build_tiny_checker(models_dir / reference, reference))
    path = Path(reference).expanduser()
    if (path / _CONFIG).is_file():
        return str(path.resolve())
    if _REPO_ID.match(reference) and not path.exists():
        return reference
    raise ConfigurationError(
        f"safety checker {reference!r} is neither a built-in ({', '.join(BUILTIN_CHECKERS)}), "
        f"a folder with {_CONFIG}, nor a Hugging Face repo id"
    )


# --- loading and running (torch from here on, imported inside the functions) ---------------------

_loaded: dict[tuple[str, str], SafetyChecker] = {}
_loaded_lock = threading.Lock()


class SafetyChecker:
    """A loaded checker on one device; `flags` says which images it flags."""

    def __init__(self, source: str, device: str = "cpu", cache_dir: Path | None = None) -> None:
        from sdapi.engine import quiet_libraries

        quiet_libraries()
        import torch
        from diffusers.pipelines.stable_diffusion.safety_checker import (
            StableDiffusionSafetyChecker,
        )
        from transformers import CLIPImageProcessor

        self.device = device
        # As the pipelines: half precision on GPUs, where it is fast.
        self.dtype = torch.float16 if device.startswith("cuda") else torch.float32
        try:
            model = StableDiffusionSafetyChecker.from_pretrained(
                source, dtype=self.dtype, cache_dir=cache_dir
            )
            self.processor = CLIPImageProcessor.from_pretrained(source, cache_dir=cache_dir)
        except Exception as exc:  # any loader failure is the operator's to fix
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise ConfigurationError(f"cannot load safety checker {source!r}: {reason}") from exc
        self.model = model.to(device).eval()

    def flags(self, images: Sequence[Image.Image]) -> list[bool]:
        """One verdict per image: True when the checker flags it."""
        import numpy as np
        import torch

        if not images:
            return []
        pixels = self.processor([image.convert("RGB") for image in images], return_tensors="pt")
        clip_input = pixels.pixel_values.to(self.device, self.dtype)
        # The checker blackens the flagged entries of `images` itself; placeholders spare it
        # copying full-size pictures, as we replace flagged images our own way.
        placeholders = np.zeros((len(images), 1, 1, 3), dtype=np.float32)
        with torch.inference_mode():
            _, verdicts = self.model(images=placeholders, clip_input=clip_input)
        return [bool(verdict) for verdict in verdicts]

    def memory_bytes(self) -> int:
        tensors = [*self.model.parameters(), *self.model.buffers()]
        return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def load_checker(source: str, device: str = "cpu", cache_dir: Path | None = None) -> SafetyChecker:
    """The checker at `source` on `device`, loaded once per process and shared by every engine.

    Shared because a real checker (a CLIP ViT-L) weighs 1.2 GB and does not depend on the model.
    """
    key = (source, device)
    with _loaded_lock:
        if key not in _loaded:
            _loaded[key] = SafetyChecker(source, device, cache_dir)
        return _loaded[key]


def build_tiny_checker(dest: Path, checker_id: str = TINY_CHECKER_ID) -> Path:
    """Build built-in checker `checker_id` into `dest` unless it is there; returns `dest`.

    As the tiny models: built beside `dest` and renamed into place, so a crash leaves no half
    folder and concurrent builders agree (the first rename wins; the builds are identical).
    """
    if checker_id not in BUILTIN_CHECKERS:
        raise ConfigurationError(f"{checker_id!r} is not a built-in safety checker")

    def save(folder: Path) -> None:
        checker, processor = _tiny_checker(flag_all=checker_id == FLAG_ALL_CHECKER_ID)
        checker.save_pretrained(folder, safe_serialization=True)
        processor.save_pretrained(folder)

    return build_atomically(dest, _CONFIG, save, "a safety checker", checker_id)


def _tiny_checker(flag_all: bool) -> tuple[StableDiffusionSafetyChecker, Any]:
    """A checker with a 2-layer, 32-wide CLIP vision model on 32 px crops (fixed seed)."""
    from sdapi.engine import quiet_libraries

    quiet_libraries()
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    tower = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4}
    config = CLIPConfig(
        # Unused by the checker, but CLIPConfig needs one; ids inside its small vocabulary.
        text_config={**tower, "num_hidden_layers": 2, "vocab_size": 99, "bos_token_id": 0}
        | {"eos_token_id": 1, "pad_token_id": 1},
        vision_config={**tower, "num_hidden_layers": 2, "image_size": 32, "patch_size": 4},
        projection_dim=32,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        checker = StableDiffusionSafetyChecker(config)
    if flag_all:
        with torch.no_grad():
            # score = cosine similarity - weight > 0 for every concept: everything is flagged.
            checker.concept_embeds_weights.fill_(-1.0)
    processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    return checker, processor
