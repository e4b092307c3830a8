"""The model registry: its TOML file, its errors, `sdapi models`, and model_list's shape.

Torch-free: sources here are folders with only a model_index.json, and checkpoint files with only
a safetensors header, which is all that validation and family detection read.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from sdapi.catalog.families import SD, SD3, SDXL
from sdapi.catalog.models import check_model_ref, model_family
from sdapi.catalog.registry import (
    MODELS_FILE_ENV,
    Defaults,
    ModelEntry,
    Registry,
    default_models_file,
    format_registry,
    parse,
)
from sdapi.cli import main
from sdapi.errors import ConfigurationError
from sdapi.settings import Settings

EXAMPLE = """\
# our models
[models.dreamshaper]
source = "/srv/models/dreamshaper_8.safetensors"
family = "sd"
config = "stable-diffusion-v1-5/stable-diffusion-v1-5"
name = "DreamShaper 8"
description = "General purpose"
instance_prompt = "dreamy"

[models.dreamshaper.defaults]
width = 512
height = 768
steps = 25
guidance_scale = 7
scheduler = "DPMSolverMultistepScheduler"
negative_prompt = "blurry"

[models."sd-1.5"]  # the house model
source = "stable-diffusion-v1-5/stable-diffusion-v1-5"
"""
#: The keys of the spec's model_list example (section 9), in its order.
MODEL_LIST_KEYS = [
    "model_id",
    "status",
    "created_at",
    "instance_prompt",
    "model_name",
    "description",
    "screenshots",
]


@pytest.fixture(autouse=True)
def _no_registry_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MODELS_FILE_ENV, raising=False)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def write_folder(folder: Path, class_name: str = "StableDiffusionPipeline") -> Path:
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    return folder


def write_checkpoint(path: Path, names: list[str]) -> Path:
    """A safetensors file holding one float per name: all family detection reads is names."""
    header = {
        name: {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]}
        for i, name in enumerate(names)
    }
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(4 * len(names)))
    return path


SD1_NAMES = [
    "model.diffusion_model.input_blocks.0.0.weight",
    "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight",
    "first_stage_model.decoder.conv_in.weight",
]
SDXL_NAMES = [
    "model.diffusion_model.input_blocks.0.0.weight",
    "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight",
    "conditioner.embedders.1.model.positional_embedding",
]


# --- the file ----------------------------------------------------------------------------------


def test_the_example_file_parses() -> None:
    dreamshaper, house = parse(EXAMPLE)
    assert dreamshaper.id == "dreamshaper" and dreamshaper.family == SD
    assert dreamshaper.config == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert dreamshaper.display_name == "DreamShaper 8"
    assert dreamshaper.defaults == Defaults(
        width=512,
        height=768,
        steps=25,
        guidance_scale=7,
        scheduler="DPMSolverMultistepScheduler",
        negative_prompt="blurry",
    )
    assert house.id == "sd-1.5" and house.family is None and house.display_name == "sd-1.5"
    assert house.defaults == Defaults()


def test_written_files_read_back_the_same() -> None:
    entries = [
        ModelEntry("a.b", '/path/with "quotes" and \\ back\\slash', family=SDXL),
        ModelEntry(
            "plain_id-2",
            "owner/name",
            description="line one\nline two\ttab, déjà vu \U0001f600 and \x7f",
            created_at="2025-01-02T03:04:05Z",
            defaults=Defaults(guidance_scale=1e-05, steps=3, negative_prompt=""),
        ),
    ]
    text = format_registry(entries)
    assert parse(text) == entries
    assert '[models."a.b"]' in text and "[models.plain_id-2.defaults]" in text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[models.a\nsource = 'x'", "not valid TOML"),
        ("[models.a]\nsource = 'x'\n[models.a]\nsource = 'y'", "not valid TOML.*twice"),
        ("[models.a]\nsource = 'x'\n[models.A]\nsource = 'y'", "duplicate model id 'A'"),
        ("[models.a]\nfamily = 'sd'", "'a' has no source"),
        ("[models.a]\nsource = ''", "'a' has no source"),
        ("[models.a]\nsource = 'x'\nfamily = 'flux'", "unknown family 'flux'"),
        ("[models.a]\nsource = 'x'\nsorce = 'y'", "unknown key 'sorce'"),
        ("[models.a]\nsource = 1", "source must be a string"),
        ("[models.a]\nsource = 'x'\ndefaults = 3", "defaults must be a table"),
        ("[models.a]\nsource = 'x'\n[models.a.defaults]\nwidht = 5", "unknown default 'widht'"),
        ("[models.a]\nsource = 'x'\n[models.a.defaults]\nwidth = true", "width must be a whole"),
        ("[models.a]\nsource = 'x'\n[models.a.defaults]\nwidth = 500", "multiple of 8"),
        ("[models.a]\nsource='x'\nfamily='sd3'\n[models.a.defaults]\nheight=72", "multiple of 16"),
        ("[models.a]\nsource = 'x'\n[models.a.defaults]\nsteps = 0", "steps must be at least 1"),
        ("[models.a]\nsource='x'\n[models.a.defaults]\nguidance_scale=-1", "guidance_scale"),
        ("[models.a]\nsource='x'\n[models.a.defaults]\nscheduler='Nope'", "scheduler"),
        (
            "[models.a]\nsource='x'\nfamily='sd3'\n[models.a.defaults]\nscheduler='DDIMScheduler'",
            "does not apply to sd3",
        ),
        ("[models.sdapi-tiny]\nsource = 'x'", "built-in model"),
        ("[models.'a/b']\nsource = 'x'", "a model id is"),
        ("[models.a]\nsource = 'x'\n[other]\n", "unknown top-level key 'other'"),
        ("models = 3", "must be tables"),
        ("[models]\na = 3", "'a' must be a table"),
    ],
)
def test_file_mistakes_are_one_line_each(text: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(text)
    with pytest.raises(ConfigurationError, match=message) as caught:
        Registry.load(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_a_missing_file_is_an_empty_registry(tmp_path: Path) -> None:
    registry = Registry.load(tmp_path / "nothing.toml")
    assert registry.declared == () and "sdapi-tiny" in registry
    assert [e.id for e in registry] == ["sdapi-tiny", "sdapi-tiny-sdxl", "sdapi-tiny-sd3"]
    assert Registry.load(None).declared == ()


def test_saving_keeps_the_operators_comments(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(EXAMPLE)
    added = Registry.load(path).with_entry(ModelEntry("new", "owner/new", family=SD3))
    added.save()
    text = path.read_text()
    assert text.startswith(EXAMPLE) and "# the house model" in text
    assert [e.id for e in Registry.load(path).declared] == ["dreamshaper", "sd-1.5", "new"]
    Registry.load(path).without("dreamshaper").save()
    text = path.read_text()
    assert "# our models" in text and "# the house model" in text and "dreamshaper" not in text
    assert [e.id for e in Registry.load(path).declared] == ["sd-1.5", "new"]


def test_files_in_another_layout_are_rewritten_whole(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text('models = { a = { source = "x" }, b = { source = "y" } }\n')
    Registry.load(path).without("a").save()
    assert [e.id for e in Registry.load(path).declared] == ["b"]
    assert "[models.b]" in path.read_text()


def test_changes_are_checked() -> None:
    registry = Registry([ModelEntry("a", "x")])
    with pytest.raises(ConfigurationError, match="duplicate model id 'A'"):
        registry.with_entry(ModelEntry("A", "y"))
    with pytest.raises(ConfigurationError, match="is not declared"):
        registry.without("b")
    with pytest.raises(ConfigurationError, match="is built in"):
        registry.without("sdapi-tiny")
    assert registry.declared == (ModelEntry("a", "x"),)  # unchanged: changes make new ones


# --- lookups, defaults and model_list ----------------------------------------------------------


def test_resolve_maps_ids_and_keeps_other_refs_working() -> None:
    registry = Registry(parse(EXAMPLE))
    assert registry.resolve("dreamshaper").source == "/srv/models/dreamshaper_8.safetensors"
    builtin = registry.resolve("sdapi-tiny-sdxl")
    assert builtin.builtin and builtin.family == SDXL and builtin.source == "sdapi-tiny-sdxl"
    other = registry.resolve("/some/folder")
    assert other.adhoc and other.source == "/some/folder" and registry.get("/some/folder") is None


def test_defaults_for() -> None:
    registry = Registry(parse(EXAMPLE))
    assert registry.defaults_for("dreamshaper").steps == 25
    assert registry.defaults_for("dreamshaper").as_dict()["negative_prompt"] == "blurry"
    assert registry.defaults_for("sd-1.5") == Defaults()
    assert registry.defaults_for("sdapi-tiny") == Defaults()
    assert registry.defaults_for("unknown").as_dict() == {}


def test_model_list_is_the_specs_array() -> None:
    registry = Registry(parse(EXAMPLE))
    listed = registry.model_list(["dreamshaper", "sdapi-tiny", "owner/direct"])
    assert isinstance(listed, list) and [list(item) for item in listed] == [MODEL_LIST_KEYS] * 3
    assert json.loads(json.dumps(listed)) == listed
    first, tiny, direct = listed
    assert first == {
        "model_id": "dreamshaper",
        "status": "model_ready",
        "created_at": None,
        "instance_prompt": "dreamy",
        "model_name": "DreamShaper 8",
        "description": "General purpose",
        "screenshots": "",
    }
    assert tiny["model_id"] == "sdapi-tiny" and "noise" in tiny["description"]
    assert direct["model_id"] == direct["model_name"] == "owner/direct"
    assert "/srv" not in json.dumps(listed)  # sources stay private


def test_default_models_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert default_models_file(tmp_path / "data" / "models") == tmp_path / "data" / "models.toml"
    assert default_models_file(None) is None
    monkeypatch.setenv(MODELS_FILE_ENV, str(tmp_path / "elsewhere.toml"))
    assert default_models_file(tmp_path / "data" / "models") == tmp_path / "elsewhere.toml"


def test_settings_name_the_file(tmp_path: Path) -> None:
    assert Settings(data_dir=tmp_path).models_path == tmp_path / "models.toml"
    moved = Settings(data_dir=tmp_path, models_file=str(tmp_path / "m.toml"))
    assert moved.models_path == tmp_path / "m.toml"
    assert moved.as_env()[MODELS_FILE_ENV] == str(tmp_path / "m.toml")


# --- the engine's view (torch-free parts) ------------------------------------------------------


def test_registry_ids_resolve_for_checks_and_families(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "xl", "StableDiffusionXLPipeline")
    checkpoint = write_checkpoint(tmp_path / "m.safetensors", SD1_NAMES)
    registry = Registry(
        [
            ModelEntry("xl", str(folder)),
            ModelEntry("declared", str(folder), family=SD3),
            ModelEntry("ckpt", str(checkpoint), config="sdapi-tiny"),
        ]
    )
    assert check_model_ref("xl", registry) == str(folder.resolve())
    assert model_family("xl", registry=registry) == SDXL
    assert model_family("declared", registry=registry) == SD3  # declared beats detected
    assert check_model_ref("ckpt", registry, tmp_path / "models") == str(checkpoint.resolve())
    assert model_family("ckpt", registry=registry) == SD
    with pytest.raises(ConfigurationError, match="neither a registry id"):
        check_model_ref("nope", registry)


def test_engine_code_finds_the_registry_beside_the_models_dir(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "xl", "StableDiffusionXLPipeline")
    Registry([ModelEntry("mine", str(folder))], tmp_path / "data" / "models.toml").save()
    assert model_family("mine", tmp_path / "data" / "models") == SDXL
    assert model_family("mine", tmp_path / "elsewhere" / "models") is None


def test_a_broken_registry_never_breaks_family_lookups(tmp_path: Path) -> None:
    (tmp_path / "models.toml").write_text("[broken")
    assert model_family("sdapi-tiny", tmp_path / "models") == SD
    with pytest.raises(ConfigurationError, match="not valid TOML"):
        check_model_ref("sdapi-tiny", Registry.load(tmp_path / "models.toml"))


def test_checkpoint_files_need_a_family_and_a_local_config(tmp_path: Path) -> None:
    xl = write_checkpoint(tmp_path / "xl.safetensors", SDXL_NAMES)
    assert model_family(str(xl)) == SDXL
    config = write_folder(tmp_path / "base", "StableDiffusionXLPipeline")
    ok = Registry([ModelEntry("xl", str(xl), config=str(config))])
    assert check_model_ref("xl", ok, tmp_path / "models") == str(xl.resolve())
    missing = Registry([ModelEntry("xl", str(xl), config="owner/base")])
    with pytest.raises(ConfigurationError, match=r"'owner/base'.*never downloads"):
        check_model_ref("xl", missing, tmp_path / "models")
    wrong = Registry([ModelEntry("sd", str(xl), config="sdapi-tiny"), ModelEntry("x", str(xl))])
    with pytest.raises(ConfigurationError, match=r"'sdapi-tiny' of sdxl checkpoint .* family sd"):
        check_model_ref("sd", wrong, tmp_path / "models")
    assert not (tmp_path / "models").exists()  # checking builds nothing
    with pytest.raises(ConfigurationError, match=r"stable-diffusion-xl-base-1\.0"):
        check_model_ref("x", wrong, tmp_path / "models")  # diffusers' own pick, if cached
    other = Registry([ModelEntry("f", str(config), config=str(config))])
    with pytest.raises(ConfigurationError, match="config is only for single-file"):
        check_model_ref("f", other)


# --- sdapi models ------------------------------------------------------------------------------


def test_models_add_list_remove(runner: CliRunner, tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path)]
    folder = write_folder(tmp_path / "src" / "xl", "StableDiffusionXLPipeline")
    added = runner.invoke(
        main,
        [
            *("models", "add", "mine", str(folder), *data, "--steps", "20", "--width", "1024"),
            *("--name", "Mine XL", "--scheduler", "EulerDiscreteScheduler"),
        ],
    )
    assert added.exit_code == 0, added.output
    assert "added mine (sdxl)" in added.stdout and "--model mine" in added.stdout
    entry = Registry.load(tmp_path / "models.toml").get("mine")
    assert entry is not None and entry.family == SDXL and entry.source == str(folder.resolve())
    assert entry.defaults == Defaults(width=1024, steps=20, scheduler="EulerDiscreteScheduler")
    assert entry.display_name == "Mine XL" and entry.created_at is not None

    listed = runner.invoke(main, ["models", "list", *data, "--model", "mine", "--model", "o/n"])
    assert listed.exit_code == 0, listed.output
    rows = [line.split() for line in listed.stdout.splitlines()]
    assert rows[0] == ["ID", "FAMILY", "SERVED", "SOURCE"]
    assert ["mine", "sdxl", "default", str(folder.resolve())] in rows
    assert ["sdapi-tiny", "sd", "-", "built-in"] in rows
    assert ["o/n", "?", "yes", "o/n"] in rows  # served, named directly

    removed = runner.invoke(main, ["models", "remove", "mine", *data])
    assert removed.exit_code == 0 and "removed mine" in removed.stdout
    assert Registry.load(tmp_path / "models.toml").declared == ()


def test_models_add_checks_what_it_is_given(runner: CliRunner, tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path)]
    sd3 = write_folder(tmp_path / "sd3", "StableDiffusion3Pipeline")

    def add(*args: str) -> str:
        result = runner.invoke(main, ["models", "add", *args, *data])
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith("sdapi: ") and result.stderr.count("\n") == 1
        return result.stderr

    assert "does not exist" in add("a", str(tmp_path / "missing"))
    assert "neither" in add("a", "not a repo")
    assert "is sd3, not sd" in add("a", str(sd3), "--family", "sd")
    assert "multiple of 16" in add("a", str(sd3), "--width", "72")  # the detected family's rule
    assert "built-in model" in add("sdapi-tiny", str(sd3))
    assert "a model id is" in add("a b", str(sd3))
    assert "cannot tell the family" in add(
        "a", str(write_checkpoint(tmp_path / "x.safetensors", ["w"]))
    )
    assert "can run code" in add("a", str(_pickle(tmp_path / "m.ckpt")))
    assert not (tmp_path / "models.toml").exists()  # nothing was written

    ok = runner.invoke(main, ["models", "add", "hub", "owner/name", *data])
    assert ok.exit_code == 0 and "family detected when it is loaded" in ok.stdout
    assert "duplicate model id" in add("HUB", "owner/other")
    gone = runner.invoke(main, ["models", "remove", "nope", *data])
    assert gone.exit_code == 2 and "'nope' is not declared" in gone.stderr


def test_models_add_takes_checkpoints_with_their_config(runner: CliRunner, tmp_path: Path) -> None:
    checkpoint = write_checkpoint(tmp_path / "dream.safetensors", SD1_NAMES)
    file = tmp_path / "conf" / "registry.toml"
    moved = ["--models-file", str(file)]
    no_config = runner.invoke(main, ["models", "add", "dream", str(checkpoint), *moved])
    assert no_config.exit_code == 2 and "never downloads" in no_config.stderr
    added = runner.invoke(
        main, ["models", "add", "dream", str(checkpoint), "--config", "sdapi-tiny", *moved]
    )
    assert added.exit_code == 0, added.output
    entry = Registry.load(file).get("dream")
    assert entry is not None and entry.family == SD and entry.config == "sdapi-tiny"
    listed = runner.invoke(main, ["models", "list", *moved])
    assert "(config: sdapi-tiny)" in listed.stdout
    assert tomllib.loads(file.read_text())["models"]["dream"]["family"] == "sd"


def test_serve_stops_on_a_broken_registry(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "models.toml").write_text("[models.a]\nsource = 'x'\nfamily = 'sd4'\n")
    result = runner.invoke(main, ["serve", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"sdapi: {tmp_path / 'models.toml'}: model 'a': unknown family 'sd4' (known: sd, sdxl, sd3)"
    )


def _pickle(path: Path) -> Path:
    path.write_bytes(b"\x80\x04K\x01.")
    return path
