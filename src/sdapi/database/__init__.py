"""Database connections and numbered schema migrations, shared by the queue and key stores."""

from __future__ import annotations
