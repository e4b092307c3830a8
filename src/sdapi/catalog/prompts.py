"""The prompt options (spec sections 3, 10): `multi_lingual`, `enhance_style`, `enhance_prompt`.

`render` gives the prompts the model draws: translated to English (`multi_lingual`, by the
worker's translator, sdapi.engine.translation), set in a named style, then with the quality
words appended, in that order, so the style's and the quality words stay English. The stored
request keeps the prompts as the client sent them; the worker renders them before drawing and
reports what it drew from, which the answers then show. Without translation the rendering is
pure, so the API shows it in meta before the job runs, as the real API shows its enhanced
prompt.

- `enhance_prompt`: the quality words the real API appends (spec section 3, verbatim).
- `enhance_style`: a named look, as Stability's style presets: the prompt is set inside the
  style's words and the style's negative words join the negative prompt. The wording here is
  sdapi's own; the names are the ones clients of image APIs know.

Torch-free and pure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final

from sdapi.jobs import GenerationRequest, Rendered

#: What the real API appends with enhance_prompt (spec section 3, as its meta.prompt shows).
ENHANCE_WORDS: Final = (
    "DSLR photography, sharp focus, Unreal Engine 5, Octane Render, Redshift, "
    "((cinematic lighting)), f/1.4, ISO 200, 1/160s, 8K, RAW, unedited, symmetrical balance, "
    "in-frame"
)


@dataclass(frozen=True, slots=True)
class Style:
    #: "{prompt}" marks where the client's prompt goes.
    template: str
    negative: str


STYLES: Final[dict[str, Style]] = {
    "3d-model": Style(
        "professional 3d model of {prompt}, octane render, highly detailed, volumetric light",
        "ugly, deformed, noisy, low poly, blurry, painting",
    ),
    "analog-film": Style(
        "analog film photo of {prompt}, faded film, desaturated, 35mm photo, grainy, vignette",
        "painting, drawing, illustration, cartoon, anime, 3d render",
    ),
    "anime": Style(
        "anime artwork of {prompt}, anime style, key visual, vibrant, studio anime",
        "photo, photorealistic, realism, deformed, ugly",
    ),
    "cinematic": Style(
        "cinematic film still of {prompt}, shallow depth of field, vignette, film grain,"
        " moody, epic, gorgeous",
        "anime, cartoon, graphic, text, painting, drawing, sketch, deformed, ugly",
    ),
    "comic-book": Style(
        "comic book panel of {prompt}, graphic illustration, comic art, vibrant, detailed",
        "photograph, deformed, glitch, noisy, realistic, stock photo",
    ),
    "digital-art": Style(
        "digital artwork of {prompt}, concept art, matte painting, highly detailed",
        "photo, photorealistic, realism, ugly",
    ),
    "enhance": Style(
        "breathtaking {prompt}, award-winning, professional, highly detailed",
        "ugly, deformed, noisy, blurry, distorted, grainy",
    ),
    "fantasy-art": Style(
        "ethereal fantasy concept art of {prompt}, magnificent, celestial, painterly, epic",
        "photographic, realistic, realism, 35mm film, dslr, deformed, ugly",
    ),
    "isometric": Style(
        "isometric style {prompt}, vibrant, beautiful, crisp, detailed, ultra detailed",
        "deformed, mutated, ugly, disfigured, blurry, realistic, photographic",
    ),
    "line-art": Style(
        "line art drawing of {prompt}, professional, sleek, modern, minimalist, graphic",
        "anime, photorealistic, 35mm film, deformed, glitch, blurry, noisy, painting, 3d",
    ),
    "low-poly": Style(
        "low-poly style {prompt}, low-poly game art, polygon mesh, jagged, blocky, angular",
        "noisy, sloppy, messy, grainy, highly detailed, ultra textured, photo",
    ),
    "neon-punk": Style(
        "neonpunk style {prompt}, cyberpunk, vaporwave, neon, vibrant, stunningly beautiful,"
        " sharp, detailed",
        "painting, drawing, illustration, glitch, deformed, mutated, ugly",
    ),
    "origami": Style(
        "origami style {prompt}, paper art, pleated paper, folded, origami art, centered",
        "noisy, sloppy, messy, grainy, highly detailed, photo, realistic",
    ),
    "photographic": Style(
        "cinematic photo of {prompt}, 35mm photograph, film, bokeh, professional, 4k,"
        " highly detailed",
        "drawing, painting, crayon, sketch, graphite, impressionist, noisy, blurry, anime",
    ),
    "pixel-art": Style(
        "pixel-art {prompt}, low-res, blocky, pixel art style, 8-bit graphics",
        "sloppy, messy, blurry, noisy, highly detailed, photorealistic, realistic",
    ),
    "tile-texture": Style(
        "{prompt}, seamless tiling texture, flat, top-down, uniform",
        "ugly, deformed, noisy, blurry, perspective, vignette",
    ),
}


def enhance(prompt: str) -> str:
    """`prompt` with the quality words appended."""
    return f"{prompt}, {ENHANCE_WORDS}" if prompt.strip() else ENHANCE_WORDS


def apply_style(name: str, prompt: str, negative_prompt: str) -> tuple[str, str]:
    """The prompt and negative prompt in style `name` (one of STYLES)."""
    style = STYLES[name]
    negative = ", ".join(part for part in (negative_prompt.strip(), style.negative) if part)
    return style.template.replace("{prompt}", prompt.strip()), negative


#: Translates one text into English: (the English text, the language detected, whether it was
#: translated); raises when the translator cannot run.
Translate = Callable[[str], tuple[str, str, bool]]


def render(request: GenerationRequest, translate: Translate | None = None) -> Rendered:
    """The prompts `request` is drawn from. Translation needs `translate` (the worker's);
    without one, or when it fails, the prompts stay in their language and `note` says why."""
    prompt, negative = request.prompt, request.negative_prompt
    language, translated, note = None, False, None
    if request.multi_lingual:
        try:
            if translate is None:
                raise RuntimeError("this worker has no translator (--translator)")
            prompt, language, translated = translate(prompt)
            if negative.strip():
                negative = translate(negative)[0]
        except Exception as exc:  # the client asked for a picture, not for a translation
            prompt, negative = request.prompt, request.negative_prompt
            note = f"multi_lingual was not applied: {exc}"
    if request.enhance_style:
        prompt, negative = apply_style(request.enhance_style, prompt, negative)
    if request.enhance_prompt:
        prompt = enhance(prompt)
    return Rendered(prompt, negative, language, translated, note)


def has_prompt_options(request: GenerationRequest) -> bool:
    """Whether rendering changes anything: a prompt option is on."""
    return request.multi_lingual or request.enhance_style is not None or request.enhance_prompt


def drawn(request: GenerationRequest, rendered: Rendered | None) -> GenerationRequest:
    """`request` with the prompts the model draws (as given when nothing rewrote them)."""
    if rendered is None:
        return request
    return replace(request, prompt=rendered.prompt, negative_prompt=rendered.negative_prompt)
