"""Save a diffusers SD or SDXL pipeline as one .safetensors file in the original (LDM) key layout,
the way civitai and A1111 distribute checkpoints: the inverse of what diffusers' single-file
loader converts, for the tests (diffusers 0.42 ships the forward conversion only; its repo's
scripts/convert_diffusers_to_original_*.py hard-code the full-size SD block counts).

- UNet `model.diffusion_model.`: input/middle/output blocks numbered as the original code does,
  for any `layers_per_block` and block count (the tiny models have 2 blocks of 2 layers).
- VAE `first_stage_model.`: the decoder's blocks counted from the bottom, attention as 1x1 convs.
- SD text encoder `cond_stage_model.transformer.`; SDXL `conditioner.embedders.0.transformer.`
  (CLIP-L) and `conditioner.embedders.1.model.` (OpenCLIP bigG: fused q/k/v, transposed
  projection).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

_UNET_RESNET = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
)
_UNET_TOP = (
    ("time_embedding.linear_1", "time_embed.0"),
    ("time_embedding.linear_2", "time_embed.2"),
    ("add_embedding.linear_1", "label_emb.0.0"),  # SDXL's size/crop conditioning
    ("add_embedding.linear_2", "label_emb.0.2"),
    ("conv_in", "input_blocks.0.0"),
    ("conv_norm_out", "out.0"),
    ("conv_out", "out.2"),
)
_UNET_BLOCK = re.compile(
    r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.*)"
)
_UNET_MID = re.compile(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)")
_VAE_BLOCK = re.compile(
    r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.*)"
)
_VAE_MID = re.compile(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.*)")
_VAE_ATTENTION = (
    ("group_norm", "norm"),
    ("to_q", "q"),
    ("to_k", "k"),
    ("to_v", "v"),
    ("to_out.0", "proj_out"),
)
_OPEN_CLIP_LAYER = (
    ("self_attn.out_proj", "attn.out_proj"),
    ("layer_norm1", "ln_1"),
    ("layer_norm2", "ln_2"),
    ("mlp.fc1", "mlp.c_fc"),
    ("mlp.fc2", "mlp.c_proj"),
)


def save_checkpoint(pipe: Any, path: Path) -> Path:
    """Write `pipe` (StableDiffusionPipeline or StableDiffusionXLPipeline) to `path`."""
    from safetensors.torch import save_file

    save_file(pipeline_state(pipe), str(path))
    return path


def pipeline_state(pipe: Any) -> dict[str, torch.Tensor]:
    state = {**unet_state(pipe.unet), **vae_state(pipe.vae)}
    if getattr(pipe, "text_encoder_2", None) is not None:
        state |= clip_state(pipe.text_encoder, "conditioner.embedders.0.transformer.")
        state |= open_clip_state(pipe.text_encoder_2, "conditioner.embedders.1.model.")
    else:
        state |= clip_state(pipe.text_encoder, "cond_stage_model.transformer.")
    return {name: tensor.contiguous() for name, tensor in state.items()}


# --- UNet --------------------------------------------------------------------------------------


def unet_state(unet: Any) -> dict[str, torch.Tensor]:
    per_block = unet.config.layers_per_block + 1  # the resnets, then the down/upsampler
    attends = ["CrossAttn" in kind for kind in unet.config.up_block_types]
    return {
        "model.diffusion_model." + _unet_key(name, per_block, attends): tensor
        for name, tensor in unet.state_dict().items()
    }


def _unet_key(name: str, per_block: int, up_attends: list[bool]) -> str:
    if match := _UNET_BLOCK.fullmatch(name):
        return _unet_block_key(match, per_block, up_attends)
    if match := _UNET_MID.fullmatch(name):
        part, index, rest = match.groups()
        if part == "attentions":
            return f"middle_block.1.{rest}"
        return f"middle_block.{2 * int(index)}.{_renamed(rest, _UNET_RESNET)}"
    return _renamed(name, _UNET_TOP)


def _unet_block_key(match: re.Match[str], per_block: int, up_attends: list[bool]) -> str:
    side, block, part, layer, rest = match.groups()
    block, layer = int(block), int(layer)
    if part == "downsamplers":
        return f"input_blocks.{per_block * (block + 1)}.0.op.{rest.removeprefix('conv.')}"
    if part == "upsamplers":  # after the block's attention, when it has one
        return f"output_blocks.{per_block * block + per_block - 1}.{1 + up_attends[block]}.{rest}"
    if side == "down":
        prefix = f"input_blocks.{per_block * block + layer + 1}"
    else:
        prefix = f"output_blocks.{per_block * block + layer}"
    if part == "attentions":
        return f"{prefix}.1.{rest}"
    return f"{prefix}.0.{_renamed(rest, _UNET_RESNET)}"


# --- VAE ---------------------------------------------------------------------------------------


def vae_state(vae: Any) -> dict[str, torch.Tensor]:
    blocks = len(vae.config.down_block_types)
    state = {}
    for name, tensor in vae.state_dict().items():
        key = _vae_key(name, blocks)
        if ".mid.attn_1." in key and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]  # the original attention is 1x1 convolutions
        state["first_stage_model." + key] = tensor
    return state


def _vae_key(name: str, blocks: int) -> str:
    if match := _VAE_BLOCK.fullmatch(name):
        coder, side, block, part, layer, rest = match.groups()
        index = int(block) if side == "down" else blocks - 1 - int(block)  # decoder: bottom-up
        if part == "resnets":
            return f"{coder}.{side}.{index}.block.{layer}.{_vae_resnet(rest)}"
        return f"{coder}.{side}.{index}.{side}sample.{rest}"
    if match := _VAE_MID.fullmatch(name):
        coder, part, index, rest = match.groups()
        if part == "attentions":
            return f"{coder}.mid.attn_1.{_renamed(rest, _VAE_ATTENTION)}"
        return f"{coder}.mid.block_{int(index) + 1}.{_vae_resnet(rest)}"
    return name.replace("conv_norm_out", "norm_out")  # conv_in/out, (post_)quant_conv as named


def _vae_resnet(rest: str) -> str:
    return rest.replace("conv_shortcut", "nin_shortcut")


# --- text encoders -----------------------------------------------------------------------------


def clip_state(encoder: Any, prefix: str) -> dict[str, torch.Tensor]:
    """CLIP as transformers' own CLIPTextModel (transformers 5 dropped its `text_model.`)."""
    return {
        prefix + ("" if name.startswith("text_model.") else "text_model.") + name: tensor
        for name, tensor in encoder.state_dict().items()
    }


def open_clip_state(encoder: Any, prefix: str) -> dict[str, torch.Tensor]:
    weights = encoder.state_dict()
    model = "text_model."
    state = {
        prefix + "positional_embedding": weights[f"{model}embeddings.position_embedding.weight"],
        prefix + "token_embedding.weight": weights[f"{model}embeddings.token_embedding.weight"],
        prefix + "ln_final.weight": weights[f"{model}final_layer_norm.weight"],
        prefix + "ln_final.bias": weights[f"{model}final_layer_norm.bias"],
        prefix + "text_projection": weights["text_projection.weight"].T,
    }
    for layer in range(encoder.config.num_hidden_layers):
        source = f"{model}encoder.layers.{layer}."
        target = f"{prefix}transformer.resblocks.{layer}."
        for kind in ("weight", "bias"):
            qkv = [weights[f"{source}self_attn.{p}_proj.{kind}"] for p in "qkv"]
            state[f"{target}attn.in_proj_{kind}"] = torch.cat(qkv)
            for new, old in _OPEN_CLIP_LAYER:
                state[f"{target}{old}.{kind}"] = weights[f"{source}{new}.{kind}"]
    return state


def _renamed(name: str, table: tuple[tuple[str, str], ...]) -> str:
    for new, old in table:
        if name.startswith(new + "."):
            return old + name[len(new) :]
    raise KeyError(f"no original name for {name}")
