"""Small file helpers shared across the package (torch-free)."""
from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def output_folder(path: str | Path) -> Path:
    """Create the ``--out`` folder (and its parents) and return it; WbcError (one line) if it cannot be used."""
    from .errors import WbcError

    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise WbcError(f"--out {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WbcError(f"cannot create the --out folder {out}: {exc.strerror or exc}") from None
    return out
