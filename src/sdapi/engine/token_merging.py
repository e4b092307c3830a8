"""Token merging (ToMe for SD, the `tomesd` package) for requests with `tomesd: "yes"`.

ToMe merges similar image tokens before the UNet's self-attention and copies the results back
after it: attention over fewer tokens is faster on large images, and the images change a little.
tomesd 0.1.3 (its latest release) still works with diffusers 0.42's SD 1.x/2.x and SDXL UNets: it
swaps each `BasicTransformerBlock`'s class for a subclass whose `forward` is tomesd's copy of
the older diffusers one. `Transformer2DModel` still calls blocks only with keywords that copy
takes, and for the plain layer-norm blocks these UNets use it computes what diffusers does (the
tests check that merging nothing gives the same bytes). SD3 cannot be patched: it has no UNet,
so `apply_patch(pipe)` fails, and its MMDiT's `JointTransformerBlock`s are not blocks tomesd
knows, so patching the transformer itself changes nothing.

Three choices differ from `tomesd.apply_patch`'s defaults, each for a reason:

- `use_rand=False`: tomesd picks its random destination tokens with a generator forked from
  torch's *global* RNG, so the same request would give different images from call to call.
  Without it an image depends on its request only, as every other image the engine makes.
- `max_downsample` is the UNet's finest attention level rather than 1. SD 1.x/2.x have attention
  at full latent resolution, so this is tomesd's own default there; SDXL's first attention blocks
  (and the tiny models') are at 1/2 resolution, where the default silently merges nothing.
- The patch lasts one call (`merged_tokens`): pipelines are cached and shared by all requests.

Which families can merge is the catalog's (sdapi.catalog.options.tomesd_problem).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

from sdapi.catalog.families import family_of
from sdapi.catalog.options import tomesd_problem
from sdapi.errors import ConfigurationError

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

#: The share of tokens merged: tomesd's recommended value (its README and paper show images
#: close to the originals at 0.5; higher ratios trade visibly more quality for speed).
TOME_RATIO: Final = 0.5


@contextlib.contextmanager
def merged_tokens(pipe: DiffusionPipeline, enabled: bool) -> Iterator[None]:
    """Merge tokens in `pipe`'s UNet for the calls inside, and unpatch it afterwards, always.

    Does nothing when not `enabled`. ValueError when the pipeline cannot merge tokens;
    ConfigurationError when tomesd is not installed.
    """
    if not enabled:
        yield
        return
    unet = _unet(pipe)
    tomesd = _import_tomesd()
    try:
        tomesd.apply_patch(
            unet,
            ratio=TOME_RATIO,
            max_downsample=finest_attention_downsample(unet),
            use_rand=False,
        )
        yield
    finally:
        tomesd.remove_patch(unet)


def finest_attention_downsample(unet: Any) -> int:
    """How far below the latent's resolution the UNet's first attention blocks run (1, 2, 4...).

    Every down block but the last halves the resolution after itself, so block i runs at 1/2**i;
    with no attention in any down block, only the middle block (at the lowest resolution) has it.
    """
    blocks = list(unet.down_blocks)
    for index, block in enumerate(blocks):
        if getattr(block, "attentions", None):
            return int(2**index)
    return int(2 ** (len(blocks) - 1))


def is_patched(pipe: DiffusionPipeline) -> bool:
    """True while any of the pipeline's UNet blocks is tomesd's (for tests and assertions)."""
    unet = getattr(pipe, "unet", None)
    return unet is not None and any(type(m).__name__ == "ToMeBlock" for m in unet.modules())


def _unet(pipe: DiffusionPipeline) -> Any:
    """The UNet to patch; ValueError when the pipeline has none with transformer blocks."""
    if problem := tomesd_problem(family_of(pipe)):
        raise ValueError(problem)
    unet = getattr(pipe, "unet", None)
    if unet is None or not any(_is_block(module) for module in unet.modules()):
        raise ValueError(f"tomesd is not available for {type(pipe).__name__} models")
    return unet


def _is_block(module: Any) -> bool:
    """A diffusers `BasicTransformerBlock` (or tomesd's subclass of one): what tomesd patches."""
    return any(cls.__name__ == "BasicTransformerBlock" for cls in type(module).__mro__)


def _import_tomesd() -> Any:
    try:
        import tomesd
    except ImportError:  # an engine install without the extra
        raise ConfigurationError(
            "tomesd needs the tomesd package: pip install 'sdapi[engine]'"
        ) from None
    return tomesd
