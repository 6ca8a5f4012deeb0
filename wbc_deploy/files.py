"""Small file helpers shared across the package (torch-free)."""
from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, streamed; of a directory: of every file under it (relative names and bytes)."""
    h = hashlib.sha256()
    path = Path(path)
    is_dir = path.is_dir()
    for f in sorted(f for f in path.rglob("*") if f.is_file()) if is_dir else [path]:
        if is_dir:
            h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    return h.hexdigest()


def list_files(root: str | Path, suffixes: Iterable[str] | None = None) -> list[Path]:
    """Files under ``root`` (recursive, following links), hidden files and folders skipped, optionally only those
    whose lower-cased suffix is in ``suffixes``. Order: a folder's files sorted by name, then its sub-folders in
    name order (the one folder walker of the package: data sets, calibration images, explain, count)."""
    wanted = None if suffixes is None else frozenset(s.lower() for s in suffixes)
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in sorted(filenames)
                     if not f.startswith(".") and (wanted is None or Path(f).suffix.lower() in wanted))
    return found


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


def _temp_name(path: Path) -> Path:
    """A hidden name beside ``path``, unique per process and thread (count workers are threads)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the temporary files that writers killed mid-write (SIGKILL, power loss) left in ``folder``.

    Only names of :func:`_temp_name`'s form (``.<name>.<pid>.<thread>.tmp``); call it when resuming, while no
    other process writes there. Returns what was removed.
    """
    gone = []
    for p in Path(folder).glob(".*.tmp"):
        parts = p.name.split(".")
        if len(parts) >= 5 and parts[-2].isdigit() and parts[-3].isdigit() and p.is_file():
            p.unlink(missing_ok=True)
            gone.append(p)
    return gone


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and ``os.replace`` it onto ``path``.

    The one implementation of every atomic write in the package: on any exception the temporary file is
    removed and ``path`` keeps its old content (or stays absent). The writer must close the file itself.
    """
    path = Path(path)
    tmp = _temp_name(path)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` to write a temporary file beside ``path``, then rename it into place; returns ``path``.

    For any writer that takes a file name (``torch.save``, ``safetensors``, ``onnx.save``, ``tifffile``...).
    """
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8", newline=""))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_save_figure(path: str | Path, fig: Any, fmt: str = "png", **savefig_kw: Any) -> Path:
    """Save a matplotlib figure to ``path`` atomically (``fmt`` is explicit: the temporary name has no suffix)."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, **savefig_kw))


def atomic_save_image(path: str | Path, image: Any, fmt: str = "PNG", **save_kw: Any) -> Path:
    """Save a PIL image to ``path`` atomically."""
    return atomic_write(path, lambda tmp: image.save(tmp, format=fmt, **save_kw))


@contextmanager
def AtomicWriter(path: str | Path) -> Iterator[TextIO]:  # noqa: N802 - used like a class: ``with AtomicWriter(p) as fh``
    """A text handle (UTF-8, ``newline=""`` for csv) on a temporary name, moved onto ``path`` only on success."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        yield fh
