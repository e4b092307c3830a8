"""Workers: claim jobs, run the engine, record one outcome per job; the processes hosting them."""

from __future__ import annotations
