"""Writing a folder or a file so that it is either complete or absent: never half-written but plausible."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_folder_atomically(destination: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(staging)`` on a fresh sibling temp folder, then rename it to ``destination``.

    A crash or an exception inside ``write`` leaves ``destination`` as it was (the temp folder is
    removed); an existing ``destination`` is replaced only once the new one is complete. The rename is
    atomic on one file system; the remove-then-rename of a replaced folder is the short window left.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        write(staging)
        if destination.exists():
            shutil.rmtree(destination)
        staging.rename(destination)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def write_file_atomically(destination: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(staging)`` on a sibling temp file (same suffix, so writers that pick a format by it
    still do), then replace ``destination`` with it in one rename; on an exception ``destination``
    stays as it was and the temp file is removed."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{destination.stem}.", suffix=destination.suffix, dir=destination.parent)
    os.close(handle)
    staging = Path(name)
    try:
        write(staging)
        os.replace(staging, destination)
    finally:
        staging.unlink(missing_ok=True)


def write_text_atomically(destination: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``destination`` through :func:`write_file_atomically`."""
    write_file_atomically(destination, lambda staging: staging.write_text(text, encoding="utf-8"))
