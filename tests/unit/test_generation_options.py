"""The generation options of spec sections 3, 9 and 10, torch-free: how the API reads them, what
it drops (and says so), what it refuses, and what they do to a job's request and its meta."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from sdapi.api.v3.options import Options
from sdapi.api.v3.protocol import read_generation, with_model_defaults
from sdapi.api.v3.translate import Links, meta
from sdapi.catalog.options import OPTIONS
from sdapi.catalog.prompts import (
    ENHANCE_WORDS,
    STYLES,
    apply_style,
    enhance,
    has_prompt_options,
    render,
)
from sdapi.catalog.registry import Registry
from sdapi.catalog.registry import parse as parse_registry
from sdapi.catalog.work import batch_key, work_units
from sdapi.engine.passes import first_pass_size
from sdapi.errors import ConfigurationError, ValidationFailed
from sdapi.jobs import Echo, GenerationRequest, Job, JobStatus, Rendered, Task
from sdapi.settings import Settings
from sdapi.storage.local import LocalStore
from tests.helpers import make_request
from tests.unit.test_vaes import write_config

# --- prompts -----------------------------------------------------------------------------------


def test_enhance_appends_the_real_api_s_words() -> None:
    assert enhance("a cat") == f"a cat, {ENHANCE_WORDS}"
    assert "((cinematic lighting))" in ENHANCE_WORDS
    assert enhance("  ") == ENHANCE_WORDS


@pytest.mark.parametrize("name", sorted(STYLES))
def test_every_style_wraps_the_prompt(name: str) -> None:
    prompt, negative = apply_style(name, " a red fox ", "blurry")
    assert "a red fox" in prompt and prompt != "a red fox"
    assert negative.startswith("blurry, ") and len(negative) > len("blurry, ")


def test_rendering_order_translate_style_enhance() -> None:
    def translate(text: str) -> tuple[str, str, bool]:
        return f"[en] {text}", "de", True

    request = make_request(
        prompt="ein Fuchs", multi_lingual=True, enhance_style="anime", enhance_prompt=True
    )
    drawn = render(request, translate)
    assert drawn.prompt.startswith("anime artwork of [en] ein Fuchs")
    assert drawn.prompt.endswith(ENHANCE_WORDS)
    assert (drawn.language, drawn.translated, drawn.note) == ("de", True, None)
    plain = render(make_request(prompt="a fox", negative_prompt="x"))
    assert (plain.prompt, plain.negative_prompt) == ("a fox", "x")
    assert not has_prompt_options(make_request()) and has_prompt_options(request)


def test_a_failing_translator_leaves_the_prompt_and_says_why() -> None:
    def unloadable(text: str) -> tuple[str, str, bool]:
        raise OSError("no-such-org/no-such-translator is not on the hub")

    request = make_request(prompt="ein Fuchs im Schnee", multi_lingual=True, enhance_prompt=True)
    drawn = render(request, unloadable)
    assert drawn.prompt == f"ein Fuchs im Schnee, {ENHANCE_WORDS}"  # the other options still run
    assert drawn.note is not None and "not on the hub" in drawn.note
    assert "no translator" in (render(request).note or "")


# --- reading the wire --------------------------------------------------------------------------


def read(
    body: dict, settings: Settings | None = None, task: Task = Task.TEXT2IMG
) -> SimpleNamespace:
    """The options as read: the request's option fields, the prompt options and the notes."""
    settings = settings or Settings(data_dir=Path("/nonexistent"))
    return view(read_generation({"prompt": "p", **body}, settings, task).options)


def view(options: Options) -> SimpleNamespace:
    return SimpleNamespace(**options.request, notes=options.notes)


#: What a request that asks for no option gets.
NOTHING = view(Options(request={o.name: o.default for o in OPTIONS if o.fields}))


def errors(body: dict, settings: Settings | None = None) -> dict[str, list[str]]:
    with pytest.raises(ValidationFailed) as caught:
        read(body, settings)
    return caught.value.message  # type: ignore[return-value]


def test_defaults_ask_for_nothing() -> None:
    assert read({}) == NOTHING
    # What v3 clients send by habit (spec section 3's example body) changes nothing either.
    habit = {"enhance_prompt": "no", "multi_lingual": "no", "panorama": "no",
             "self_attention": "no", "upscale": "no", "embeddings_model": None}  # fmt: skip
    assert read(habit) == NOTHING


@pytest.mark.parametrize(
    ("value", "factor"),
    [("yes", 2), ("no", 1), ("1", 1), ("2", 2), (2, 2), ("3", 3), (3, 3), ("true", 2)],
)
def test_upscale_values(value: object, factor: int) -> None:
    assert read({"upscale": value}).upscale == factor


@pytest.mark.parametrize("value", ["4", "x2", "1.5", True])
def test_bad_upscale_values_are_refused(value: object) -> None:
    assert "upscale" in errors({"upscale": value})


def test_upscale_counts_in_the_pixel_cap() -> None:
    settings = Settings(data_dir=Path("/nonexistent"), max_job_pixels=1024 * 1024)
    assert read({"width": 512, "height": 512, "upscale": "2"}, settings).upscale == 2
    message = errors({"width": 512, "height": 512, "upscale": "3"}, settings)["samples"][0]
    assert "upscale" in message and "2359296" in message


def test_unknown_style_is_refused() -> None:
    assert "enhance_style" in errors({"enhance_style": "vaporwave-deluxe"})


def test_variants_are_dropped_where_they_cannot_run_and_say_why() -> None:
    sdxl = Settings(model=("sdapi-tiny-sdxl",), data_dir=Path("/nonexistent"))
    options = read({"panorama": "yes", "self_attention": "yes"}, sdxl)
    assert not options.panorama and not options.self_attention
    assert "SD 1.x/2.x" in options.notes["panorama"]
    img2img = read({"panorama": "yes", "init_image": "https://x/y.png"}, task=Task.IMG2IMG)
    assert not img2img.panorama and "text2img" in img2img.notes["panorama"]
    both = read({"panorama": "yes", "self_attention": "yes"})
    assert both.panorama and not both.self_attention
    assert "panorama" in both.notes["self_attention"]


def test_self_attention_with_a_sigma_scheduler_is_refused() -> None:
    message = errors({"self_attention": "yes", "scheduler": "EulerDiscreteScheduler"})
    assert "DDIMScheduler" in message["scheduler"][0]
    assert read({"self_attention": "yes", "scheduler": "DDIMScheduler"}).self_attention


def test_self_attention_with_the_model_s_own_sigma_scheduler_is_refused(tmp_path: Path) -> None:
    # The built-in tiny model's folder, as the worker builds it: its scheduler is Euler.
    config = tmp_path / "models" / "sdapi-tiny" / "scheduler" / "scheduler_config.json"
    config.parent.mkdir(parents=True)
    config.write_text(json.dumps({"_class_name": "EulerDiscreteScheduler"}))
    settings = Settings(data_dir=tmp_path)
    message = errors({"self_attention": "yes"}, settings)["scheduler"][0]
    assert "EulerDiscreteScheduler" in message
    assert read({"self_attention": "yes", "scheduler": "PNDMScheduler"}, settings).self_attention
    # Not built yet: the model's scheduler cannot be told here, and the worker checks it.
    assert read({"self_attention": "yes"}).self_attention


def test_tomesd_on_sd3_and_multi_lingual_without_translator_are_dropped() -> None:
    sd3 = Settings(model=("sdapi-tiny-sd3",), data_dir=Path("/nonexistent"))
    options = read({"tomesd": "yes", "multi_lingual": "yes"}, sd3)
    assert not options.tomesd and "tomesd" in options.notes
    assert not options.multi_lingual and "--translator" in options.notes["multi_lingual"]
    translating = Settings(translator="sdapi-tiny-translator", data_dir=Path("/nonexistent"))
    assert read({"multi_lingual": "yes"}, translating).multi_lingual


def test_a_vae_must_be_installed(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert "not installed" in errors({"vae": "stabilityai/sd-vae-ft-mse"}, settings)["vae"][0]
    assert "vae" in errors({"vae": "../../etc"}, settings)
    assert read({"vae": "default"}, settings).vae is None


# --- the job -----------------------------------------------------------------------------------


def test_options_enter_the_batch_key_and_the_work() -> None:
    plain = make_request()
    for changes in (
        {"panorama": True},
        {"self_attention": True},
        {"highres_fix": True},
        {"upscale": 2},
        {"vae": "v"},
        {"tomesd": True},
    ):
        assert batch_key(replace(plain, **changes)) != batch_key(plain), changes
    assert work_units(replace(plain, upscale=2)) > work_units(plain)
    assert work_units(replace(plain, self_attention=True)) > work_units(plain)
    assert replace(plain, upscale=3).output_size == (192, 192)
    # A panorama denoises overlapping 512 px windows: 768 px wide is 5 of them, 512x384 each.
    wide = make_request(width=768, height=384)
    assert work_units(replace(wide, panorama=True)) == pytest.approx(work_units(wide) * 10 / 3)
    assert work_units(replace(plain, panorama=True)) == work_units(plain)  # one window


def test_requests_keep_their_options_in_json_and_old_json_reads() -> None:
    request = make_request(panorama=True, upscale=3, vae="org/v", tomesd=True, highres_fix=True)
    assert GenerationRequest.from_json(request.to_json()) == request
    old = asdict(make_request())
    for name in ("panorama", "self_attention", "highres_fix", "upscale", "vae", "tomesd"):
        del old[name]
    assert GenerationRequest.from_json(json.dumps(old)) == make_request()


@pytest.mark.parametrize(
    ("size", "highres", "native", "first"),
    [
        ((1024, 1024), True, 512, (512, 512)),
        ((1024, 512), True, 512, (720, 360)),  # the native area, the request's aspect ratio
        ((512, 512), True, 512, (512, 512)),  # no larger than native: one pass, as asked
        ((1024, 1024), False, 512, (1024, 1024)),
        ((2048, 64), True, 256, (1448, 64)),  # never below the smallest side
    ],
)
def test_first_pass_size(size: tuple, highres: bool, native: int, first: tuple) -> None:
    request = make_request(width=size[0], height=size[1], highres_fix=highres)
    assert first_pass_size(request, native) == first


def test_meta_says_what_was_done_and_why_not(tmp_path: Path) -> None:
    request = make_request(
        panorama=True, upscale=2, vae="org/v", enhance_prompt=True, enhance_style="anime",
        multi_lingual=True,
    )  # fmt: skip
    echo = Echo(notes={"self_attention": "self_attention was not applied: not combined"})
    drawn = Rendered("anime artwork of a fox, ...", "", language="de", translated=True)
    job = Job(id=1, owner="k", status=JobStatus.SUCCESS, request=request, created_at=0.0,
              output_names=("generations/x-0.png",), echo=echo, rendered=drawn)  # fmt: skip
    data = meta(job, Links("http://h", LocalStore(tmp_path)))
    assert data["panorama"] == "yes" and data["self_attention"] == "no"
    assert data["upscale"] == "2" and data["vae"] == "org/v" and data["tomesd"] == "no"
    assert data["enhance_prompt"] == "yes" and data["enhance_style"] == "anime"
    assert data["multi_lingual"] == "yes" and data["language"] == "de"
    assert data["prompt"] == drawn.prompt  # what the worker drew from
    assert data["self_attention_note"].startswith("self_attention was not applied")
    plain = meta(
        replace(job, request=make_request(), echo=Echo(), rendered=None),
        Links("http://h", LocalStore(tmp_path)),
    )
    assert plain["upscale"] == "no" and plain["vae"] == "default"
    assert not [key for key in plain if key.endswith("_note")]


def test_a_model_s_default_vae_comes_from_the_registry(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "vae" / "stabilityai" / "sd-vae-ft-mse"
    write_config(folder)
    (tmp_path / "models.toml").write_text(
        '[models.dream]\nsource = "sdapi-tiny"\n\n'
        '[models.dream.defaults]\nvae = "stabilityai/sd-vae-ft-mse"\n'
    )
    registry = Registry.load(tmp_path / "models.toml")
    settings = Settings(data_dir=tmp_path, model=("dream",))
    body = with_model_defaults({"prompt": "p"}, registry, settings)
    assert read(body, settings).vae == "stabilityai/sd-vae-ft-mse"
    own = with_model_defaults({"prompt": "p", "vae": "default"}, registry, settings)
    assert read(own, settings).vae is None  # what the client sends wins
    with pytest.raises(ConfigurationError, match=r"defaults\.vae"):
        parse_registry('[models.x]\nsource = "sdapi-tiny"\n[models.x.defaults]\nvae = "../x"\n')
