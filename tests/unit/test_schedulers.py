"""Torch-free scheduler and family rules: what the API checks before a job is queued."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from sdapi.catalog.families import (
    FAMILIES,
    SD,
    SD3,
    SDXL,
    check_size,
    family_of_class,
    family_of_folder,
    size_multiple,
)
from sdapi.catalog.models import model_family
from sdapi.catalog.schedulers import (
    ALGORITHM_TYPES,
    KARRAS_CLASSES,
    SCHEDULERS,
    UNSUPPORTED,
    check_scheduler_options,
    plan_scheduler,
    supported_schedulers,
)
from sdapi.catalog.work import batch_key
from sdapi.jobs import GenerationRequest, Task
from tests.helpers import make_request

EULER = "EulerDiscreteScheduler"
DPM = "DPMSolverMultistepScheduler"
DPM_SINGLE = "DPMSolverSinglestepScheduler"


# --- families ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("class_name", "family"),
    [
        ("StableDiffusionPipeline", SD),
        ("StableDiffusionImg2ImgPipeline", SD),
        ("StableDiffusionInpaintPipeline", SD),
        ("StableDiffusionXLPipeline", SDXL),
        ("StableDiffusionXLInpaintPipeline", SDXL),
        ("StableDiffusion3Pipeline", SD3),
        ("StableDiffusion3Img2ImgPipeline", SD3),
        ("StableDiffusionXLControlNetPipeline", None),
        ("StableDiffusionUpscalePipeline", None),
        ("FluxPipeline", None),
    ],
)
def test_family_of_a_pipeline_class(class_name: str, family: str | None) -> None:
    assert family_of_class(class_name) == family


def write_index(folder: Path, class_name: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    return folder


def test_family_of_a_folder(tmp_path: Path) -> None:
    assert family_of_folder(write_index(tmp_path / "xl", "StableDiffusionXLPipeline")) == SDXL
    assert family_of_folder(tmp_path / "missing") is None
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text("[not an object")
    assert family_of_folder(broken) is None
    (broken / "model_index.json").write_text("[1, 2]")
    assert family_of_folder(broken) is None


def test_model_family_without_loading(tmp_path: Path) -> None:
    assert model_family("sdapi-tiny") == SD
    assert model_family("sdapi-tiny-sdxl") == SDXL
    assert model_family("sdapi-tiny-sd3") == SD3
    folder = write_index(tmp_path / "mine", "StableDiffusion3Pipeline")
    assert model_family(str(folder)) == SD3
    # A hub model already downloaded into the models directory's cache.
    snapshot = tmp_path / "hub" / "models--owner--name" / "snapshots" / "abc123"
    write_index(snapshot, "StableDiffusionXLPipeline")
    assert model_family("owner/name", tmp_path) == SDXL
    assert model_family("owner/name") is None  # no cache to look in
    assert model_family("owner/other", tmp_path) is None  # not downloaded yet
    assert not (tmp_path / "sdapi-tiny").exists()  # nothing was built


def test_sizes_per_family() -> None:
    assert [size_multiple(f) for f in FAMILIES] == [8, 8, 16]
    assert size_multiple(None) == 8
    assert check_size(SDXL, 72, 64) is None
    assert check_size(SD3, 64, 48) is None
    message = check_size(SD3, 72, 64)
    assert message is not None and "sd3" in message and "16" in message and "72x64" in message
    assert check_size(None, 60, 64) is not None


# --- which schedulers each family takes -------------------------------------------------------


def test_sd_and_sdxl_take_every_supported_wire_name_in_every_task() -> None:
    for family in (SD, SDXL, None):
        for task in (*Task, None):
            assert supported_schedulers(family, task) == frozenset(SCHEDULERS)


def test_sd3_takes_flow_matching_samplers() -> None:
    everywhere = {EULER, "HeunDiscreteScheduler"}
    assert supported_schedulers(SD3) == everywhere
    assert supported_schedulers(SD3, Task.IMG2IMG) == everywhere
    assert supported_schedulers(SD3, Task.INPAINT) == everywhere
    text2img = everywhere | {DPM, DPM_SINGLE, "UniPCMultistepScheduler"}
    assert supported_schedulers(SD3, Task.TEXT2IMG) == text2img


def test_sd3_maps_wire_names_to_flow_matching_classes() -> None:
    assert plan_scheduler(EULER, SD3, None).class_name == "FlowMatchEulerDiscreteScheduler"
    heun = plan_scheduler("HeunDiscreteScheduler", SD3, Task.INPAINT)
    assert heun.class_name == "FlowMatchHeunDiscreteScheduler"
    dpm = plan_scheduler(DPM, SD3, Task.TEXT2IMG)
    assert dpm.class_name == DPM
    assert dpm.settings == {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}
    assert plan_scheduler(EULER, SDXL, Task.INPAINT).class_name == EULER


@pytest.mark.parametrize("task", [*Task, None])
@pytest.mark.parametrize("name", sorted(set(SCHEDULERS) | set(UNSUPPORTED)))
def test_every_wire_name_is_taken_or_refused_with_a_reason(name: str, task: Task | None) -> None:
    for family in FAMILIES:
        message = check_scheduler_options(name, family, task=task)
        if name in supported_schedulers(family, task):
            assert message is None
        else:
            assert message is not None and name in message
            assert family in message or name in UNSUPPORTED


def test_sd3_refusals_say_why_and_what_to_use() -> None:
    message = check_scheduler_options("DDIMScheduler", SD3)
    assert message is not None
    assert "'DDIMScheduler' does not apply to sd3 models" in message
    assert "flow-matching" in message and EULER in message
    message = check_scheduler_options(DPM, SD3, task=Task.IMG2IMG)
    assert message is not None and "only text2img on sd3" in message
    message = check_scheduler_options("LCMScheduler", SD3, task=Task.TEXT2IMG)
    assert message is not None and "seed" in message


def test_unknown_scheduler_names_are_refused() -> None:
    message = check_scheduler_options("NoSuchScheduler", SD)
    assert message == "scheduler 'NoSuchScheduler' is not supported: unknown scheduler"
    with pytest.raises(ValueError, match="NoSuchScheduler"):
        plan_scheduler("NoSuchScheduler", SD, Task.TEXT2IMG)


# --- use_karras_sigmas -------------------------------------------------------------------------


KARRAS_WIRE = sorted(name for name in SCHEDULERS if name in KARRAS_CLASSES)


def test_karras_wire_names() -> None:
    assert set(KARRAS_WIRE) == {
        DPM,
        DPM_SINGLE,
        "DEISMultistepScheduler",
        EULER,
        "HeunDiscreteScheduler",
        "KDPM2AncestralDiscreteScheduler",
        "KDPM2DiscreteScheduler",
        "LMSDiscreteScheduler",
        "UniPCMultistepScheduler",
    }


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_karras_applies_where_the_class_has_it(name: str) -> None:
    for family in (SD, SDXL):
        message = check_scheduler_options(name, family, use_karras_sigmas=True)
        if name in KARRAS_WIRE:
            assert message is None
            plan = plan_scheduler(name, family, None, use_karras_sigmas=True)
            assert plan.settings["use_karras_sigmas"] is True
        else:
            assert message is not None and "use_karras_sigmas" in message and name in message
            assert EULER in message  # it lists the schedulers that do have Karras sigmas


def test_karras_on_sd3() -> None:
    assert check_scheduler_options(EULER, SD3, True) is None  # FlowMatch Euler has them
    heun = check_scheduler_options("HeunDiscreteScheduler", SD3, True)
    assert heun is not None and "sd3" in heun and "FlowMatchHeunDiscreteScheduler" in heun
    flow = check_scheduler_options(DPM, SD3, True, task=Task.TEXT2IMG)
    assert flow is not None and "black images" in flow and "sd3" in flow


def test_options_for_the_models_default_scheduler() -> None:
    # Unknown default: only what needs no class is checked here; the worker checks the rest.
    assert check_scheduler_options(None, SD, True) is None
    assert check_scheduler_options(None, SD, algorithm_type="dpmsolver++") is None
    assert check_scheduler_options(None, SD, algorithm_type="nope") is not None
    # Known default (model_index.json's "scheduler" entry).
    assert (
        check_scheduler_options(None, SD3, True, default_class="FlowMatchEulerDiscreteScheduler")
        is None
    )
    message = check_scheduler_options(None, SD, True, default_class="PNDMScheduler")
    assert message is not None and "the model's default scheduler PNDMScheduler" in message
    assert check_scheduler_options(None, SD, algorithm_type="dpmsolver", default_class=DPM) is None


# --- algorithm_type ----------------------------------------------------------------------------


def test_algorithm_types_follow_diffusers() -> None:
    assert ALGORITHM_TYPES[DPM] == ("dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++")
    assert ALGORITHM_TYPES[DPM_SINGLE] == ("dpmsolver", "dpmsolver++", "sde-dpmsolver++")
    for family in (SD, SDXL):
        for name, accepted in ALGORITHM_TYPES.items():
            for value in accepted:
                assert check_scheduler_options(name, family, algorithm_type=value) is None
    message = check_scheduler_options(DPM_SINGLE, SD, algorithm_type="sde-dpmsolver")
    assert message is not None and DPM_SINGLE in message and "takes dpmsolver, " in message


def test_first_generation_solvers_end_on_sigma_min() -> None:
    # diffusers refuses dpmsolver/sde-dpmsolver with its default final sigma of zero.
    for value in ("dpmsolver", "sde-dpmsolver"):
        plan = plan_scheduler(DPM, SD, Task.TEXT2IMG, algorithm_type=value)
        assert plan.settings == {"algorithm_type": value, "final_sigmas_type": "sigma_min"}
    plan = plan_scheduler(DPM, SD, Task.TEXT2IMG, algorithm_type="sde-dpmsolver++")
    assert plan.settings == {"algorithm_type": "sde-dpmsolver++"}


def test_the_specs_sample_value_gets_a_hint() -> None:
    message = check_scheduler_options(DPM, SD, algorithm_type="dpmsolver+++")
    assert message is not None
    assert "'dpmsolver+++' is unknown (did you mean 'dpmsolver++'?)" in message
    message = check_scheduler_options(DPM, SD, algorithm_type="zzz")
    assert message is not None and "did you mean" not in message and "sde-dpmsolver++" in message


def test_algorithm_type_only_for_dpm_solvers() -> None:
    message = check_scheduler_options(EULER, SDXL, algorithm_type="dpmsolver++")
    assert message is not None and "algorithm_type applies only to" in message
    assert EULER in message


def test_algorithm_type_on_sd3() -> None:
    assert (
        check_scheduler_options(DPM, SD3, algorithm_type="dpmsolver++", task=Task.TEXT2IMG) is None
    )
    for value in ("dpmsolver", "sde-dpmsolver", "sde-dpmsolver++"):
        message = check_scheduler_options(DPM, SD3, algorithm_type=value, task=Task.TEXT2IMG)
        assert message is not None and "sd3" in message and repr(value) in message


# --- the request carries the options -----------------------------------------------------------


def base_request() -> GenerationRequest:
    return make_request(prompt="p", seed=1, scheduler=DPM)


def test_options_are_part_of_the_batch_key() -> None:
    plain = base_request()
    assert batch_key(plain) == f"sdapi-tiny|text2img|64x64|2|{DPM}|7.5|None"  # unchanged
    karras = replace(plain, use_karras_sigmas=True)
    sde = replace(plain, algorithm_type="sde-dpmsolver++")
    both = replace(karras, algorithm_type="sde-dpmsolver++")
    assert len({batch_key(plain), batch_key(karras), batch_key(sde), batch_key(both)}) == 4


def test_options_survive_json_and_old_json_still_reads() -> None:
    request = replace(base_request(), use_karras_sigmas=True, algorithm_type="dpmsolver")
    assert GenerationRequest.from_json(request.to_json()) == request
    old = json.loads(base_request().to_json())
    del old["use_karras_sigmas"], old["algorithm_type"]
    assert GenerationRequest.from_json(json.dumps(old)) == base_request()
