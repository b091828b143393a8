"""Artifact files (frozen references, variant weights) checked against their recorded sha256 before
anything reads them, and how such a refusal is worded, so that the parent side can tell a damaged
file from a model that failed, without importing the worker side that loads them."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

HASH_CHUNK = 2**20


class ArtifactError(RuntimeError):
    """An artifact (a reference or variant weights) that is missing, altered or otherwise refused."""


# How open_verified words its refusals; `damaged` reads them back from a stored error or reason.
MISSING = "is missing"
MISMATCH = "does not match its recorded sha256"


def damaged(text: str | None) -> bool:
    """Whether an error text says a file was changed or removed on disk (open_verified's refusal),
    not that it failed to load or to reproduce its output."""
    return text is not None and (MISMATCH in text or f" {MISSING}" in text)


@contextlib.contextmanager
def open_verified(path: Path, sha256: str | None, what: str) -> Iterator[IO[bytes]]:
    """The file open for reading, positioned at its start, once its bytes hash to `sha256`.

    One handle is hashed and then read, so the file cannot be swapped in between; a missing file or
    another hash is an ArtifactError naming `what` and the path.
    """
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise ArtifactError(f"{what} {path} {MISSING}") from None
    with handle:
        found = sha256_of(handle)
        if found != sha256:
            raise ArtifactError(
                f"{what} {path} {MISMATCH} (expected {sha256}, "
                f"found {found}): it was altered or corrupted; refusing to load it"
            )
        handle.seek(0)
        yield handle


def sha256_of(handle: IO[bytes]) -> str:
    """The hex sha256 of what is left to read of `handle`, read in chunks."""
    digest = hashlib.sha256()
    while chunk := handle.read(HASH_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()
