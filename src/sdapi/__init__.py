"""sdapi: a self-hosted image-generation server speaking the Stable Diffusion API v3."""

from __future__ import annotations

__version__ = "0.1.0"
