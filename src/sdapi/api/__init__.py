"""The HTTP API: app factory, error rendering, routes. Never imports torch (DESIGN.md section 4)."""

from __future__ import annotations
