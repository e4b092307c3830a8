"""Folders that appear whole: the built-in tiny models, checker and translator are built this way.

A folder is built beside its destination and renamed into place, so a crash never leaves half of
one, and several processes may race to build the same one: the first rename wins and the others
discard their copy (the builds are identical).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from sdapi.errors import ConfigurationError


def build_atomically(
    dest: Path, marker: str, save: Callable[[Path], None], what: str, name: str
) -> Path:
    """`dest`, built by `save(folder)` unless `dest/marker` (a file a complete build has) is
    there already. `what` and `name` word the error when `dest` holds something else."""
    dest = Path(dest)
    if (dest / marker).is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Beside dest, so the final rename stays on one filesystem; mkdir (unlike mkdtemp) honours
    # the umask, so the folder gets the usual permissions.
    tmp = dest.parent / f".{dest.name}.building-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        save(tmp)
        try:
            os.replace(tmp, dest)  # replaces a missing or empty directory, never a full one
        except OSError:
            if not (dest / marker).is_file():  # else a concurrent builder won the race
                raise ConfigurationError(
                    f"{dest} exists but is not {what}; remove it to rebuild {name}"
                ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when the rename succeeded
    return dest
