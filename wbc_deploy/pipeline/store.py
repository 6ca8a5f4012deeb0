"""The per-slide progress store that makes ``--resume`` exact, and atomic file writing.

While a slide is counted, each finished tile (in tile order) is appended as one JSON line to
``DIR/.<slide>.partial/tiles.jsonl`` and flushed to disk; ``settings.json`` beside it records the
hash of everything that determines the result (model bytes, slide identity, scale, scan geometry,
batch size). ``--resume`` reloads the finished tiles, skips them and continues; the final
``cells.csv`` is assembled from the store, so an interrupted-and-resumed slide gives the same bytes
as an uninterrupted one. The store is deleted once the slide's outputs are in place.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import WbcError
from ..files import AtomicWriter, atomic_write_text  # noqa: F401 - re-exported: the store's writers

STORE_FORMAT = 1


def slide_identity(path: Path, sample: int = 1 << 20) -> str:
    """A cheap fingerprint of a slide file: size plus SHA-256 of its first and last MiB."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(sample))
        if size > sample:
            fh.seek(max(sample, size - sample))
            h.update(fh.read(sample))
    return h.hexdigest()


def settings_hash(settings: dict) -> str:
    """Stable hash of a JSON-able settings dict."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class StoredCell:
    """A committed cell as kept in the store: level-0 centre, area, class probabilities, outline."""

    x: float
    y: float
    area_um2: float
    probs: list[float]
    outline: list[list[float]]


class ProgressStore:
    """Finished tiles of one slide, appended durably, in tile order."""

    def __init__(self, out_dir: Path, name: str) -> None:
        self.dir = Path(out_dir) / f".{name}.partial"
        self.tiles_path = self.dir / "tiles.jsonl"
        self.settings_path = self.dir / "settings.json"
        self._fh = None

    # -- lifecycle -------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.settings_path.is_file()

    def start(self, settings: dict) -> None:
        """Begin a fresh store (an old one is discarded)."""
        self.discard()
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.settings_path, json.dumps({"format": STORE_FORMAT, "hash": settings_hash(settings),
                                                          "settings": settings}, sort_keys=True, indent=1) + "\n")
        self._fh = open(self.tiles_path, "w", encoding="utf-8")

    def resume(self, settings: dict, slide: str) -> list[int]:
        """Reopen an existing store made with the same settings; returns the finished tile indices in order.

        A different hash (other model, options or slide file) is refused with a WbcError; a torn last
        line (the process died while writing it) is cut off.
        """
        try:
            meta = json.loads(self.settings_path.read_text())
        except (OSError, json.JSONDecodeError):
            meta = {}
        if meta.get("format") != STORE_FORMAT or meta.get("hash") != settings_hash(settings):
            old = meta.get("settings", {})
            differs = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k)) or ["format"]
            raise WbcError(
                f"cannot resume {slide}: its partial results were made with a different {', '.join(differs)}; "
                "rerun with the same model and options, or without --resume to start it over"
            )
        indices: list[int] = []
        good = 0
        if self.tiles_path.is_file():
            with open(self.tiles_path, "rb") as fh:
                for line in fh:
                    if not line.endswith(b"\n"):
                        break
                    try:
                        indices.append(int(json.loads(line)["t"]))
                    except (ValueError, KeyError, TypeError):
                        break
                    good += len(line)
        with open(self.tiles_path, "ab") as fh:
            fh.truncate(good)
        self._fh = open(self.tiles_path, "a", encoding="utf-8")
        return indices

    def append(self, tile_index: int, cells: list[StoredCell], focus: float | None = None) -> None:
        """Commit one finished tile durably (one line, flushed and fsynced); ``focus``: its blur estimate (um)."""
        assert self._fh is not None, "store not started"
        rec = {"t": int(tile_index), "c": [[c.x, c.y, c.area_um2, c.probs, c.outline] for c in cells]}
        if focus is not None:
            rec["f"] = round(float(focus), 4)
        self._fh.write(json.dumps(rec, separators=(",", ":")) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def discard(self) -> None:
        """Remove the store (after the slide's outputs are in place, or to start over)."""
        self.close()
        if self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- reading ---------------------------------------------------------------------------------
    def _records(self) -> Iterator[dict]:
        """Every committed tile record in order (a torn last line, from a killed writer, ends the list)."""
        if not self.tiles_path.is_file():
            return
        with open(self.tiles_path, encoding="utf-8") as fh:
            for line in fh:
                if not line.endswith("\n"):
                    break
                yield json.loads(line)

    def iter_tiles(self) -> Iterator[tuple[int, int, float | None]]:
        """Every committed tile in order: (tile index, cells, focus blur estimate in um or None)."""
        for rec in self._records():
            yield rec["t"], len(rec["c"]), rec.get("f")

    def iter_cells(self) -> Iterator[tuple[int, StoredCell]]:
        """Every committed cell in tile order then raster order within a tile: (tile index, cell)."""
        for rec in self._records():
            for x, y, a, p, o in rec["c"]:
                yield rec["t"], StoredCell(x=x, y=y, area_um2=a, probs=p, outline=o)
