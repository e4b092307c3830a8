"""The Stable Diffusion API v3 wire: fields, answers and routes. Wire names live only here."""

from __future__ import annotations
