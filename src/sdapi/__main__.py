"""`python -m sdapi` is the `sdapi` command."""

from __future__ import annotations

from sdapi.cli import main

main()
