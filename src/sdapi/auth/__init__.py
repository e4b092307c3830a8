"""API keys: how they are made, stored (hashed) and checked."""

from __future__ import annotations
