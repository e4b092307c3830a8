"""Prompt rewriting the wire asks for: `enhance_prompt` and `enhance_style` (spec sections 3, 10).

Both are text, done when the job is submitted, so the answer's `meta.prompt` shows the prompt
the model really got (as the real API's does) and a retried job draws the same picture.

- `enhance_prompt`: the quality words the real API appends (spec section 3, verbatim).
- `enhance_style`: a named look, as Stability's style presets: the prompt is set inside the
  style's words and the style's negative words join the negative prompt. The wording here is
  sdapi's own; the names are the ones clients of image APIs know.

Torch-free and pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

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
