"""Where images live: the `ImageStore` port and its backends (a local directory by default)."""

from __future__ import annotations
