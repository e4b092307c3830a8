"""Loading installed VAEs (sdapi.catalog.vaes) and decoding one pipeline call with one.

`Vaes.get` loads a VAE once and keeps it, on the device and in the dtype of the pipeline's own VAE
(loaded again when its files change on disk, or when asked for on another device or dtype; the
least recently used are dropped beyond `max_loaded`: each holds ~80M parameters). `swapped_vae`
puts it on a pipeline for one call and always puts the model's own back, so no other request ever
decodes with it.

Swap around the pipeline call only: a pipeline derived with `from_pipe` while a VAE is swapped in
would keep it for good. Each derived pipeline (img2img, inpaint) has its own `.vae` attribute, so
swap on the pipeline that runs. The image processors were built for the model's VAE scale
factor, so a VAE with another one is refused, as is one with other latent channels.

Single files are loaded with diffusers' `from_single_file`, offline, with the serving model's own
VAE config (written to a temporary folder: diffusers takes a config folder, not a dict). Torch and
diffusers are imported inside the functions, as everywhere in the engine.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sdapi.catalog.vaes import CONFIG, WEIGHTS, inspect_vae, is_valid_name, vae_source

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, DiffusionPipeline

#: VAEs kept loaded between calls.
MAX_LOADED_VAES = 2
#: How much of a loader's message a ValueError keeps.
_MAX_REASON = 300

#: (relative path, size, mtime_ns) of each file a VAE was loaded from.
Signature = tuple[tuple[str, int, int], ...]


class Vaes:
    """The installed VAEs loaded for one model's pipelines (the Engine's lock serialises calls)."""

    def __init__(self, models_dir: Path, max_loaded: int = MAX_LOADED_VAES) -> None:
        self.models_dir = Path(models_dir)
        self.max_loaded = max_loaded
        self.reset()

    @property
    def loaded(self) -> list[str]:
        """Names of the VAEs held in memory, least recently used first."""
        return list(self._loaded)

    def get(self, name: str, like: AutoencoderKL) -> AutoencoderKL:
        """VAE `name`, loaded once, on the device and in the dtype of `like` (the model's VAE).

        ValueError, with a message for the client, when it is not installed, cannot be loaded,
        or does not fit `like` (latent channels, scale factor).
        """
        if not is_valid_name(name):
            raise ValueError(f"{name[:120]!r} is not a valid VAE name")
        source = vae_source(self.models_dir, name)
        if source is None:
            raise ValueError(f"VAE {name!r} is not installed on this server")
        signature = _signature(source)
        cached = self._loaded.get(name)
        if cached is not None and cached[0] == signature and _placed_as(cached[1], like):
            self._loaded.move_to_end(name)
            return cached[1]
        # New, changed on disk, or wanted elsewhere: loaded again (casting a half-precision
        # copy back to float32 would not restore what was lost).
        self._loaded.pop(name, None)
        vae = self._load(source, name, like)
        check_fit(vae, like, f"VAE {name!r}")
        self._loaded[name] = (signature, vae)
        while len(self._loaded) > self.max_loaded:
            self._loaded.popitem(last=False)
        return vae

    def using(
        self, pipe: DiffusionPipeline, name: str | None
    ) -> contextlib.AbstractContextManager[None]:
        """A context decoding `pipe`'s calls with VAE `name` (None: the model's own, no change)."""
        if name is None:
            return contextlib.nullcontext()
        return swapped_vae(pipe, self.get(name, pipe.vae))

    def reset(self) -> None:
        """Drop every loaded VAE (the model they were loaded for has been unloaded)."""
        self._loaded: OrderedDict[str, tuple[Signature, AutoencoderKL]] = OrderedDict()

    def _load(self, source: Path, name: str, like: AutoencoderKL) -> AutoencoderKL:
        """Load VAE `name` from its folder or file; ValueError with a one-line reason if not."""
        from sdapi.engine import quiet_libraries

        try:
            inspect_vae(source)  # another class of model, pickle weights: refused unread
        except ValueError as exc:
            raise ValueError(f"VAE {name!r} cannot be used: {exc}") from None
        quiet_libraries()
        try:
            vae = _load_folder(source) if source.is_dir() else _load_file(source, like)
        except Exception as exc:  # any loader failure: the installed VAE is unusable here
            reason = _reason(exc)
            for path in {str(self.models_dir), str(self.models_dir.resolve())}:
                reason = reason.replace(path, "<models>")  # no server paths for clients
            raise ValueError(f"VAE {name!r} cannot be loaded for this model: {reason}") from exc
        # A file missing some tensors can leave them unallocated ("meta") rather than fail.
        if any(parameter.is_meta for parameter in vae.parameters()):
            raise ValueError(f"VAE {name!r} cannot be loaded for this model: tensors are missing")
        vae.eval()
        return vae.to(device=like.device, dtype=like.dtype)


@contextlib.contextmanager
def swapped_vae(pipe: DiffusionPipeline, vae: AutoencoderKL | None) -> Iterator[None]:
    """`pipe` decodes (and encodes init images) with `vae` inside the block; the model's own VAE
    is back afterwards, also when the call raises. None changes nothing."""
    if vae is None:
        yield
        return
    original = pipe.vae
    check_fit(vae, original, "this VAE")
    # The image processors were built with the pipeline's factor: it must not change.
    expected = getattr(pipe, "vae_scale_factor", scale_factor(vae))
    if scale_factor(vae) != expected:
        raise ValueError(f"this VAE shrinks images {scale_factor(vae)} times, not {expected}")
    pipe.vae = vae
    try:
        yield
    finally:
        pipe.vae = original


def check_fit(vae: AutoencoderKL, like: AutoencoderKL, label: str) -> None:
    """ValueError unless `vae` makes latents of the shape `like`'s pipeline works in; `label`
    names the VAE in the message ("VAE 'x'")."""
    ours, theirs = vae.config.latent_channels, like.config.latent_channels
    if ours != theirs:
        raise ValueError(f"{label} has {ours} latent channels; this model's VAE has {theirs}")
    if scale_factor(vae) != scale_factor(like):
        raise ValueError(
            f"{label} shrinks images {scale_factor(vae)} times; "
            f"this model's VAE shrinks them {scale_factor(like)} times"
        )


def scale_factor(vae: AutoencoderKL) -> int:
    """How many times the VAE shrinks an image (as diffusers' pipelines compute it)."""
    return int(2 ** (len(vae.config.block_out_channels) - 1))


def _load_folder(folder: Path) -> AutoencoderKL:
    from diffusers import AutoencoderKL

    # Never pickles: a .bin beside the .safetensors is ignored (inspect_vae wants the latter).
    return AutoencoderKL.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)


def _load_file(path: Path, like: AutoencoderKL) -> AutoencoderKL:
    """A single file has no config: it takes the model's own VAE config (its architecture, its
    scaling factor), as A1111 does."""
    from diffusers import AutoencoderKL

    with tempfile.TemporaryDirectory(prefix="sdapi-vae-") as config_folder:
        like.save_config(config_folder)
        return AutoencoderKL.from_single_file(
            str(path), config=config_folder, local_files_only=True
        )


def _placed_as(vae: AutoencoderKL, like: AutoencoderKL) -> bool:
    return bool(vae.device == like.device and vae.dtype == like.dtype)


def _signature(source: Path) -> Signature:
    """The files a VAE is loaded from, with their sizes and modification times."""
    if source.is_dir():
        files = [source / CONFIG, *sorted(source.glob(WEIGHTS))]
        base = source
    else:
        files, base = [source], source.parent
    signature = []
    for file in files:
        with contextlib.suppress(OSError):  # vanished since: the load reports it
            stat = file.stat()
            signature.append((str(file.relative_to(base)), stat.st_size, stat.st_mtime_ns))
    return tuple(signature)


def _reason(exc: BaseException) -> str:
    """One line on why: torch's "Error(s) in loading state_dict" says what only on line two."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (" ".join(lines[:2]) or type(exc).__name__)[:_MAX_REASON]
