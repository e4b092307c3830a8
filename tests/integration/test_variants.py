"""Panorama, self-attention guidance, highres_fix and upscale on the real pipelines (tiny models,
CPU), and the per-request VAE and token merging through the engine.

Each option must change the picture (a test against the image made without it) and leave the
engine as it was (the plain request makes the same bytes afterwards); images made together in
one batch must equal the ones made alone.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from sdapi.catalog.builtins import TINY_SDXL_MODEL_ID
from sdapi.catalog.families import SDXL
from sdapi.engine import passes
from sdapi.engine.engine import Engine
from sdapi.engine.tiny import _vae, seeded
from sdapi.jobs import Task
from tests.integration.test_engine import png, request

pytestmark = [
    pytest.mark.engine,
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept:DeprecationWarning"),
]

#: Self-attention guidance needs a DDIM-like scheduler; the tiny model's own is Euler.
DDIM = "DDIMScheduler"


def differs(a: object, b: object) -> float:
    return float(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).mean())


def test_panorama_is_one_wide_picture_made_in_windows(engine: Engine) -> None:
    # 576 px wide: two 512 px windows (the model's native size) 64 px apart.
    wide = request(width=576, height=64)
    plain = engine.generate(wide)[0]
    panorama = engine.generate(replace(wide, panorama=True))[0]
    assert panorama.size == (576, 64)
    assert differs(panorama, plain) > 1
    assert png(engine.generate(replace(wide, panorama=True))[0]) == png(panorama)
    assert png(engine.generate(wide)[0]) == png(plain)  # the base pipeline is untouched


def test_self_attention_guidance_changes_the_image(engine: Engine) -> None:
    base = request(scheduler=DDIM, steps=3)
    plain = engine.generate(base)[0]
    guided = engine.generate(replace(base, self_attention=True))[0]
    assert differs(guided, plain) > 1
    assert png(engine.generate(base)[0]) == png(plain)


def test_self_attention_reports_progress_and_can_be_cancelled(engine: Engine) -> None:
    seen: list[tuple[int, int]] = []
    engine.generate(
        request(scheduler=DDIM, steps=3, self_attention=True),
        on_step=lambda done, total: seen.append((done, total)) or True,
    )
    assert seen == [(1, 3), (2, 3), (3, 3)]
    from sdapi.engine.engine import GenerationCancelled

    with pytest.raises(GenerationCancelled):
        engine.generate(
            request(scheduler=DDIM, steps=3, self_attention=True), on_step=lambda d, t: d < 2
        )


def test_self_attention_refuses_sigma_schedulers(engine: Engine) -> None:
    with pytest.raises(ValueError, match="does not work with EulerDiscreteScheduler"):
        engine.generate(request(self_attention=True))  # the tiny model's default: Euler


def test_variants_are_refused_where_diffusers_has_none(engines: dict[str, Engine]) -> None:
    sdxl = engines[SDXL]
    with pytest.raises(ValueError, match=r"only available for SD 1\.x/2\.x"):
        sdxl.generate(request(model=TINY_SDXL_MODEL_ID, panorama=True))


def test_upscale_doubles_the_sides_and_redraws(engine: Engine) -> None:
    base = request(samples=2)
    plain = engine.generate(base)
    seen: list[float] = []
    upscaled = engine.generate(
        replace(base, upscale=2), on_step=lambda done, total: seen.append(done / total) or True
    )
    assert [image.size for image in upscaled] == [(128, 128), (128, 128)]
    # Not a mere enlargement: the img2img pass redrew it.
    for small, large in zip(plain, upscaled, strict=True):
        assert differs(large, small.resize((128, 128))) > 1
    assert seen == sorted(seen) and seen[-1] == 1.0


def test_two_pass_images_in_a_batch_equal_the_ones_made_alone(engine: Engine) -> None:
    first = request(upscale=2, prompt="a red boat")
    second = replace(first, prompt="a green hill", seed=99)
    # Alone, in calls of the same number of rows (padded): what batching promises.
    alone = [png(engine.generate_batch([r], [{}], rows=2)[0][0]) for r in (first, second)]
    together = engine.generate_batch([first, second], [{}, {}], rows=2)
    assert [png(images[0]) for images in together] == alone


def test_highres_fix_draws_at_the_native_size_first(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The tiny model's native 512 px costs tens of seconds on a CPU: pretend it is 64 px.
    monkeypatch.setattr(passes, "native_size", lambda pipe: 64)
    large = request(width=128, height=128)
    fixed = engine.generate(replace(large, highres_fix=True))[0]
    assert fixed.size == (128, 128)
    assert differs(fixed, engine.generate(large)[0]) > 1
    # No larger than native: nothing to fix, one pass, the plain image.
    small = request()
    assert png(engine.generate(replace(small, highres_fix=True))[0]) == png(
        engine.generate(small)[0]
    )


def test_highres_fix_and_upscale_work_for_img2img_and_inpaint(engine: Engine) -> None:
    from tests.integration.test_engine import noise_image

    init = noise_image(1)
    mask = noise_image(2).convert("L")
    for task in (Task.IMG2IMG, Task.INPAINT):
        made = engine.generate(request(task, upscale=2), {"init": init, "mask": mask})
        assert made[0].size == (128, 128)


def test_a_vae_from_the_models_folder_decodes_the_request(engine: Engine) -> None:
    folder = engine.models_dir / "vae" / "org" / "other-vae"
    if not folder.exists():
        seeded(lambda: _vae(scaling_factor=0.5)).save_pretrained(folder)
    base = request()
    plain = engine.generate(base)[0]
    other = engine.generate(replace(base, vae="org/other-vae"))[0]
    assert differs(other, plain) > 1
    assert png(engine.generate(base)[0]) == png(plain)  # the model's own VAE is back
    with pytest.raises(ValueError, match="not installed"):
        engine.generate(replace(base, vae="org/missing"))


def test_token_merging_changes_the_image_and_is_undone(engine: Engine) -> None:
    base = request(width=128, height=128)
    plain = engine.generate(base)[0]
    merged = engine.generate(replace(base, tomesd=True))[0]
    assert differs(merged, plain) > 0.5
    assert png(engine.generate(base)[0]) == png(plain)
