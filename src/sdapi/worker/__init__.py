"""Workers: claim jobs, run the engine, record one outcome per job; and the processes that host them."""

from __future__ import annotations
