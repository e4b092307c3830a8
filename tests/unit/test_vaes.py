"""The wire's `vae` and the installed VAEs, without torch (sdapi.catalog.vaes).

VAE folders are written here as a config.json alone and single files as a safetensors header with
no tensor data: the checks read nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdapi.catalog.families import SD, SD3, SDXL
from sdapi.catalog.vaes import (
    VAE_DIR,
    VaeShape,
    check_vae,
    inspect_vae,
    installed_vaes,
    is_valid_name,
    parse_vae,
    vae_source,
)

FOUR_BLOCKS = [128, 256, 512, 512]  # the real SD VAEs': scale factor 8


def write_config(folder: Path, **config: object) -> Path:
    """A diffusers VAE folder: its config.json, and an empty stand-in for its weights."""
    folder.mkdir(parents=True, exist_ok=True)
    values = {"_class_name": "AutoencoderKL", "latent_channels": 4}
    values |= {"block_out_channels": FOUR_BLOCKS, **config}
    (folder / "config.json").write_text(json.dumps(values), encoding="utf-8")
    (folder / "diffusion_pytorch_model.safetensors").touch()  # only its presence is checked
    return folder


def write_header(path: Path, shapes: dict[str, list[int]]) -> Path:
    """A safetensors file's header naming `shapes` (their data is left out)."""
    header = {
        name: {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}
        for name, shape in shapes.items()
    }
    data = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(len(data).to_bytes(8, "little") + data)
    return path


def ldm_vae(latent_channels: int = 4, blocks: int = 4, prefix: str = "") -> dict[str, list[int]]:
    """The tensors an original-layout (A1111) VAE file names, as far as the checks look."""
    shapes = {f"{prefix}decoder.conv_in.weight": [512, latent_channels, 3, 3]}
    for index in range(blocks):
        shapes[f"{prefix}decoder.up.{index}.block.0.conv1.weight"] = [128, 128, 3, 3]
    shapes[f"{prefix}encoder.conv_out.weight"] = [2 * latent_channels, 512, 3, 3]
    return shapes


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    vae = tmp_path / VAE_DIR
    write_config(vae / "stabilityai" / "sd-vae-ft-mse")
    write_config(vae / "sdxl-vae", scaling_factor=0.13025)
    write_config(vae / "sd3-vae", latent_channels=16)
    write_header(vae / "vae-ft-mse-840000-ema-pruned.safetensors", ldm_vae())
    write_header(vae / "community" / "sd3-single.safetensors", ldm_vae(16, prefix="vae."))
    return tmp_path


# --- parsing the wire ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, "", "  ", "none", "None", "default", "Automatic"])
def test_the_models_own_vae(value: str | None) -> None:
    assert parse_vae(value) is None


@pytest.mark.parametrize(
    ("value", "name"),
    [
        ("stabilityai/sd-vae-ft-mse", "stabilityai/sd-vae-ft-mse"),
        (" sdxl-vae ", "sdxl-vae"),
        ("vae-ft-mse-840000-ema-pruned.safetensors", "vae-ft-mse-840000-ema-pruned"),
        ("kl-f8-anime2.SAFETENSORS", "kl-f8-anime2"),
        ("org/v1.0_final", "org/v1.0_final"),
    ],
)
def test_names(value: str, name: str) -> None:
    assert parse_vae(value) == name


@pytest.mark.parametrize(
    "value",
    [
        "..",
        "../vae",
        "org/..",
        "a/../../etc",
        "/etc/passwd",
        "/abs/vae",
        "C:\\models\\vae",
        "org\\name",
        "a/b/c",
        "a//b",
        "org/",
        ".hidden",
        "org/.cache",
        "~/vae",
        "vae name",
        "x" * 101,
        ".safetensors",
        "https://huggingface.co/stabilityai/sd-vae-ft-mse",
        "vae\x00",
    ],
)
def test_unsafe_names_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match="not a valid VAE name"):
        parse_vae(value)
    assert not is_valid_name(value)


# --- what is installed --------------------------------------------------------------------------


def test_installed_vaes_lists_folders_and_files(models_dir: Path) -> None:
    vae = models_dir / VAE_DIR
    (vae / "empty-folder").mkdir()  # no config.json: not a VAE, not a namespace with any
    (vae / "notes.txt").write_text("x")
    (vae / "old.ckpt").write_bytes(b"pickle")  # pickles are never loaded
    write_config(vae / ".cache" / "hidden")
    write_config(vae / "a" / "b" / "too-deep")
    assert installed_vaes(models_dir) == [
        "community/sd3-single",
        "sd3-vae",
        "sdxl-vae",
        "stabilityai/sd-vae-ft-mse",
        "vae-ft-mse-840000-ema-pruned",
    ]


def test_nothing_installed(tmp_path: Path) -> None:
    assert installed_vaes(tmp_path) == []
    assert (
        check_vae(tmp_path, "x", SD)
        == "VAE 'x' is not installed on this server (none are installed)"
    )


def test_a_folder_wins_over_a_file_of_the_same_name(models_dir: Path) -> None:
    vae = models_dir / VAE_DIR
    assert vae_source(models_dir, "vae-ft-mse-840000-ema-pruned") == (
        vae / "vae-ft-mse-840000-ema-pruned.safetensors"
    )
    write_header(vae / "sdxl-vae.safetensors", ldm_vae())
    assert vae_source(models_dir, "sdxl-vae") == vae / "sdxl-vae"
    assert vae_source(models_dir, "stabilityai") is None  # a namespace is not a VAE
    assert vae_source(models_dir, "../vae") is None


# --- checks -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "families"),
    [
        ("stabilityai/sd-vae-ft-mse", (SD, SDXL, None)),
        ("sdxl-vae", (SD, SDXL, None)),
        ("vae-ft-mse-840000-ema-pruned", (SD, SDXL, None)),
        ("sd3-vae", (SD3, None)),
        ("community/sd3-single", (SD3, None)),
    ],
)
def test_installed_vaes_that_fit(models_dir: Path, name: str, families: tuple) -> None:
    for family in families:
        assert check_vae(models_dir, name, family) is None


@pytest.mark.parametrize("name", ["sd3-vae", "community/sd3-single"])
def test_a_16_channel_vae_is_refused_for_sd_and_sdxl(models_dir: Path, name: str) -> None:
    assert check_vae(models_dir, name, SD) == (
        f"VAE {name!r} has 16 latent channels; sd models need a VAE with 4"
    )
    assert "sdxl models need a VAE with 4" in str(check_vae(models_dir, name, SDXL))


def test_a_4_channel_vae_is_refused_for_sd3(models_dir: Path) -> None:
    for name in ("stabilityai/sd-vae-ft-mse", "vae-ft-mse-840000-ema-pruned"):
        assert "has 4 latent channels; sd3 models need a VAE with 16" in str(
            check_vae(models_dir, name, SD3)
        )


def test_another_scale_factor_is_refused(models_dir: Path) -> None:
    vae = models_dir / VAE_DIR
    write_config(vae / "x4", block_out_channels=[128, 256, 512])
    write_header(vae / "x4-file.safetensors", ldm_vae(blocks=3))
    for name in ("x4", "x4-file"):
        assert check_vae(models_dir, name, SD) == (
            f"VAE {name!r} shrinks images 4 times; sd models need a VAE that shrinks them 8 times"
        )
        assert check_vae(models_dir, name, None) is None  # the loader compares with the model's


def test_an_unknown_vae_lists_the_installed_ones(models_dir: Path) -> None:
    problem = check_vae(models_dir, "stabilityai/sdxl-vae", SD)
    assert problem == (
        "VAE 'stabilityai/sdxl-vae' is not installed on this server (installed: "
        "community/sd3-single, sd3-vae, sdxl-vae, stabilityai/sd-vae-ft-mse, "
        "vae-ft-mse-840000-ema-pruned)"
    )
    assert str(models_dir) not in problem


def test_a_long_list_is_cut_short(tmp_path: Path) -> None:
    for index in range(13):
        write_header(tmp_path / VAE_DIR / f"v{index:02}.safetensors", ldm_vae())
    problem = str(check_vae(tmp_path, "nope", SD))
    assert problem.endswith(
        "(installed: v00, v01, v02, v03, v04, v05, v06, v07, v08, v09 and 3 more)"
    )


def test_other_kinds_of_vae_are_refused(models_dir: Path) -> None:
    vae = models_dir / VAE_DIR
    write_config(vae / "taesd", _class_name="AutoencoderTiny")
    assert check_vae(models_dir, "taesd", SD) == (
        "VAE 'taesd' cannot be used: it is a AutoencoderTiny; only AutoencoderKL VAEs are supported"
    )


def test_a_folder_without_safetensors_weights_is_refused(models_dir: Path) -> None:
    folder = write_config(models_dir / VAE_DIR / "pickled")
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    (folder / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    assert check_vae(models_dir, "pickled", SD) == (
        "VAE 'pickled' cannot be used: its folder has no diffusion_pytorch_model*.safetensors "
        "weights (pickle .bin files are not loaded)"
    )
    (folder / "diffusion_pytorch_model.fp16.safetensors").touch()  # a variant will do
    assert check_vae(models_dir, "pickled", SD) is None


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"{not json", "its config.json cannot be read"),
        (b"[1, 2]", "its config.json is not a model config"),
        (b'{"latent_channels": "four"}', "its config.json is not an AutoencoderKL config"),
        (b'{"block_out_channels": []}', "its config.json is not an AutoencoderKL config"),
    ],
)
def test_broken_configs(models_dir: Path, content: bytes, reason: str) -> None:
    folder = models_dir / VAE_DIR / "broken"
    folder.mkdir()
    (folder / "config.json").write_bytes(content)
    assert check_vae(models_dir, "broken", SD) == f"VAE 'broken' cannot be used: {reason}"


def test_broken_single_files(models_dir: Path) -> None:
    vae = models_dir / VAE_DIR
    (vae / "junk.safetensors").write_bytes(b"definitely not a safetensors file")
    (vae / "short.safetensors").write_bytes(b"\x01")
    write_header(vae / "unet-only.safetensors", {"model.diffusion_model.out.2.weight": [4, 320]})
    write_header(vae / "odd.safetensors", {"decoder.conv_in.weight": [512]})
    assert "not a readable safetensors file" in str(check_vae(models_dir, "junk", SD))
    assert "not a readable safetensors file" in str(check_vae(models_dir, "short", SD))
    assert "holds no VAE decoder" in str(check_vae(models_dir, "unet-only", SD))
    assert "unexpected shape" in str(check_vae(models_dir, "odd", SD))


def test_file_shapes_in_each_layout(tmp_path: Path) -> None:
    whole = write_header(tmp_path / "whole.safetensors", ldm_vae(prefix="first_stage_model."))
    assert inspect_vae(whole) == VaeShape(4, 8)
    diffusers = {"decoder.conv_in.weight": [64, 16, 3, 3]}
    diffusers |= {f"decoder.up_blocks.{i}.resnets.0.conv1.weight": [64, 64, 3, 3] for i in range(4)}
    assert inspect_vae(write_header(tmp_path / "d.safetensors", diffusers)) == VaeShape(16, 8)


def test_invalid_names_are_refused_by_check(models_dir: Path) -> None:
    assert check_vae(models_dir, "../sdxl-vae", SD) == "vae '../sdxl-vae' is not a valid VAE name"
