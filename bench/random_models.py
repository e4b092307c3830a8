"""Build full-size Stable Diffusion 1.5 and SDXL architectures with random weights, offline.

For GPU benchmarks: timing does not depend on the weights, and no machine of ours can download
real ones. The UNets, VAEs and text encoders have the published configurations (SD 1.5: about
1.07 B parameters; SDXL base: about 3.5 B); the tokenizer is sdapi's tiny offline one, whose
ids all fall inside CLIP's vocabulary, so prompts still run through every layer. Saved in fp16
diffusers format (SD 1.5: 2 GiB; SDXL: 6.5 GiB):

    .venv/bin/python bench/random_models.py sd15 /tmp/sd15-random
    .venv/bin/python bench/random_models.py sdxl /tmp/sdxl-random
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

#: The CLIP text encoders: SD 1.5's and SDXL's first (ViT-L), SDXL's second (OpenCLIP bigG).
CLIP_L = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}
CLIP_BIG_G = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
              "num_attention_heads": 20, "projection_dim": 1280, "hidden_act": "gelu"}  # fmt: skip


def _tokenizer() -> Any:
    from transformers import CLIPTokenizer

    from sdapi.engine.tiny import TOKENIZER_DIR

    return CLIPTokenizer.from_pretrained(TOKENIZER_DIR, model_max_length=77)


def _clip(tokenizer: Any, sizes: dict[str, Any], projection: bool = False) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=49408, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **sizes,
    )  # fmt: skip
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _vae(**config: Any) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4, layers_per_block=2,
        **config,
    )  # fmt: skip


def _scheduler() -> Any:
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        timestep_spacing="leading",
    )  # fmt: skip


def build_sd15(dest: Path) -> Path:
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    tokenizer = _tokenizer()
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                          "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                        "CrossAttnUpBlock2D"),
    )  # fmt: skip
    pipe = StableDiffusionPipeline(
        vae=_vae(sample_size=512), text_encoder=_clip(tokenizer, CLIP_L), tokenizer=tokenizer,
        unet=unet, scheduler=_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    pipe.to(torch.float16).save_pretrained(dest)
    return dest


def build_sdxl(dest: Path) -> Path:
    import torch
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    tokenizer = _tokenizer()
    unet = UNet2DConditionModel(
        sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
        cross_attention_dim=2048, use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    )  # fmt: skip
    pipe = StableDiffusionXLPipeline(
        # SDXL's VAE overflows in fp16: its config says so, and sdapi keeps it in fp32.
        vae=_vae(sample_size=1024, scaling_factor=0.13025, force_upcast=True),
        text_encoder=_clip(tokenizer, CLIP_L), text_encoder_2=_clip(tokenizer, CLIP_BIG_G, True),
        tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=_scheduler(),
    )  # fmt: skip
    pipe.to(torch.float16).save_pretrained(dest)
    return dest


BUILDERS = {"sd15": build_sd15, "sdxl": build_sdxl}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(BUILDERS))
    parser.add_argument("dest", type=Path, help="folder to write the diffusers model into")
    args = parser.parse_args()
    started = time.perf_counter()
    BUILDERS[args.model](args.dest)
    size = sum(f.stat().st_size for f in args.dest.rglob("*") if f.is_file())
    print(f"built {args.dest} ({size / 2**30:.2f} GiB) in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
