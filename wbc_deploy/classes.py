"""Canonical white-blood-cell class names, their aliases and display colours."""
from __future__ import annotations

import re

#: The five WBC classes of the reference paper, in canonical (alphabetical) order.
CLASSES: tuple[str, ...] = ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")

#: The label ``count`` gives a cell whose calibrated confidence is below the model card's threshold
#: (CellaVision's term). Such cells stay in cells.csv with their probabilities and are left out of the
#: differential's denominator.
UNIDENTIFIED = "unidentified"

#: The reviewed label of a detection a technologist rejects (debris, a smudge cell, a giant platelet): it
#: leaves the WBC count altogether (``recount``; never predicted by a model).
NOT_A_WBC = "not_a_wbc"

#: One-letter codes used by the paper's tables (B, E, L, M, N).
SHORT: dict[str, str] = {c: c[0].upper() for c in CLASSES}

#: Colours (RGB hex) used for a class in plots, galleries and GeoJSON.
COLOURS: dict[str, str] = {
    "basophil": "#6a3d9a",
    "eosinophil": "#e6550d",
    "lymphocyte": "#1f78b4",
    "monocyte": "#33a02c",
    "neutrophil": "#e31a1c",
    UNIDENTIFIED: "#808080",
    NOT_A_WBC: "#222222",
}

_ALIASES: dict[str, str] = {
    "baso": "basophil", "b": "basophil",
    "eos": "eosinophil", "eosi": "eosinophil", "eosino": "eosinophil", "e": "eosinophil",
    "lym": "lymphocyte", "lymp": "lymphocyte", "lymph": "lymphocyte", "lympho": "lymphocyte", "l": "lymphocyte",
    "mono": "monocyte", "m": "monocyte",
    "neu": "neutrophil", "neut": "neutrophil", "neutro": "neutrophil", "neutrophile": "neutrophil", "n": "neutrophil",
    "seg": "neutrophil", "segmented neutrophil": "neutrophil", "band": "neutrophil",
}


def normalise_class_name(name: str) -> str | None:
    """Map a folder or label name to a canonical class name, or None if it is not a WBC class.

    Case, surrounding whitespace, separators, a plural 's' and a leading index ("1_neutrophil")
    are ignored: ``NEUTROPHIL``, ``Neutrophils``, ``02-neutrophil`` all give ``neutrophil``.
    """
    key = name.strip().lower()
    key = re.sub(r"^\d+[\s._-]*", "", key)  # "1_neutrophil", "02-Lymphocyte"
    key = re.sub(r"[\s._-]+", " ", key).strip()
    candidates = [key]
    if key.endswith("s"):
        candidates.append(key[:-1])
    for cand in candidates:
        if cand in CLASSES:
            return cand
        if cand in _ALIASES:
            return _ALIASES[cand]
    return None
