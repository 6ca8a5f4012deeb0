"""Turn the command line's files and directories into the ordered list of slides to count."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ..console import warn
from ..errors import WbcError
from ..files import list_files
from ..images import IMAGE_SUFFIXES

#: Whole-slide formats OpenSlide reads (DICOM slides are folders: pass the folder's files or the folder).
SLIDE_EXTENSIONS: tuple[str, ...] = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".svslide", ".bif", ".tif", ".tiff", ".dcm")
#: Slides and plain images (single fields of view, crops: the package's one image suffix list).
KNOWN_EXTENSIONS: tuple[str, ...] = SLIDE_EXTENSIONS + tuple(s for s in IMAGE_SUFFIXES if s not in SLIDE_EXTENSIONS)


def slide_name(path: str | Path) -> str:
    """The output stem of a slide: its file name without the extension (``a/b/s1.svs`` -> ``s1``)."""
    return Path(path).name[: -len(Path(path).suffix) or None]


def is_slide_file(path: Path) -> bool:
    """A file with a known slide or image extension that is not hidden."""
    return path.suffix.lower() in KNOWN_EXTENSIONS and not path.name.startswith(".")


def discover_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given, directories searched recursively for known extensions (sorted per directory).

    A path that does not exist is kept (it gets an error row), so every argument is accounted for.
    Duplicates (the same file reached twice) are dropped. Raises WbcError when nothing is left.
    """
    out: list[Path] = []
    seen: set[Path] = set()
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            found = list_files(p, KNOWN_EXTENSIONS)
            if not found:
                warn(f"no slides or images ({', '.join(KNOWN_EXTENSIONS)}) in {p}")
            candidates = found
        else:
            candidates = [p]
        for f in candidates:
            key = f.resolve() if f.exists() else f.absolute()
            if key in seen:
                continue
            seen.add(key)
            out.append(f)
    if not out:
        raise WbcError("no slides to count: pass slide or image files, or folders that contain them")
    return out
