"""Making a loaded pipeline fast on its device, without changing what it computes.

On a GPU: half precision (bf16 for the families whose activations overflow fp16, none of the
current three), the UNet in channels_last memory (its convolutions run on NHWC kernels),
a VAE that decodes one image at a time (a batch's decode no longer peaks at N images' memory)
and tiles above TILE_PIXELS (the only way to decode very large images on a small card; tiles
change pixels slightly, so it stays off below), and the SDXL VAE kept in fp32 when its config
says fp16 overflows (diffusers would move its weights to fp32 and back on every call).
Attention is PyTorch's scaled_dot_product_attention, diffusers' default with torch 2.

Opt-in everywhere: `--compile` wraps the denoiser (UNet or transformer) in torch.compile with
dynamic shapes, so the call sizes and image sizes a worker sees reuse one compiled graph
instead of recompiling; the warm-up at load pays the compilation before the first job.
On a CPU nothing changes (fp32, the default layout), so images there stay bit-identical to a
bare diffusers pipeline.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sdapi.catalog.families import Family

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

log = logging.getLogger(__name__)

#: Families whose activations overflow fp16 on a GPU (Flux-like transformers; none yet).
BF16_FAMILIES: frozenset[str] = frozenset()
#: Output area above which a GPU's VAE decodes in tiles (an image larger than 1536x1536).
TILE_PIXELS = 1536 * 1536


def on_gpu(device: str) -> bool:
    return device.startswith("cuda")


def dtype_for(device: str, family: Family | None) -> torch.dtype:
    """The weights' dtype: fp32 on a CPU (no fast fp16 kernels), else fp16, or bf16 where the
    family needs its range and the card has it."""
    import torch

    if not on_gpu(device):
        return torch.float32
    if family in BF16_FAMILIES and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def tune(pipe: DiffusionPipeline, device: str) -> None:
    """The GPU settings above, on a freshly loaded pipeline (a CPU's is left as it is)."""
    if not on_gpu(device):
        return
    import torch

    if (unet := getattr(pipe, "unet", None)) is not None:
        unet.to(memory_format=torch.channels_last)
    vae = getattr(pipe, "vae", None)
    if vae is None:
        return
    vae.enable_slicing()
    if vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        keep_vae_in_fp32(vae)


def keep_vae_in_fp32(vae: Any) -> None:
    """Hold a VAE that overflows in fp16 (SDXL's) in fp32 for good, casting what it is given:
    diffusers would otherwise copy its weights to fp32 and back around every decode."""
    import torch

    vae.to(torch.float32)
    vae.register_to_config(force_upcast=False)

    def to_fp32(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)

    for part in (vae.encoder, vae.decoder, vae.quant_conv, vae.post_quant_conv):
        if part is not None:
            part.register_forward_pre_hook(to_fp32)


def tiles_for(pipe: DiffusionPipeline, device: str, width: int, height: int) -> bool:
    """Turn VAE tiling on for a call this large on a GPU, off otherwise; True when on."""
    vae = getattr(pipe, "vae", None)
    if vae is None or not hasattr(vae, "enable_tiling"):
        return False
    tiled = on_gpu(device) and width * height > TILE_PIXELS
    if tiled:
        vae.enable_tiling()
    else:
        vae.disable_tiling()
    return tiled


def denoiser_name(pipe: DiffusionPipeline) -> str | None:
    """The component that runs every step: the UNet, or the transformer of SD3 and later."""
    return next((name for name in ("unet", "transformer") if hasattr(pipe, name)), None)


def compile_denoiser(pipe: DiffusionPipeline) -> None:
    """torch.compile the denoiser with dynamic shapes: one graph for every batch and image
    size (a static one would recompile for each new call size)."""
    name = denoiser_name(pipe)
    if name is None:
        return
    # In place (nn.Module.compile): the module keeps its class, so img2img and inpaint derived
    # with from_pipe share it, and LoRAs still load into it.
    getattr(pipe, name).compile(dynamic=True)
    log.info("compiling the %s (torch.compile, dynamic shapes) during the warm-up", name)
