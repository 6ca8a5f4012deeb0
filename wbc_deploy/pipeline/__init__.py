"""The count stream: slides -> tiles -> WBC detection -> batched classification -> differential counts.

``count_slides(inputs, model, out_dir, CountOptions(...))`` is the library entry point of
``wbc-deploy count``. Torch-free (the torch backend imports torch only when chosen).

How a slide is counted (module by module):

- :mod:`.scale`: microns per pixel from ``--mpp``, the slide, or its red cells (``mpp_source``).
- :mod:`.plan`: a thumbnail (~8 um/px) separates smear from glass; the *detection* resolution is the
  coarsest pyramid level no coarser than ``DETECT_MPP`` (1 um/px; finer pixels are block-averaged in
  memory), tiled in ``TILE_UM`` cores plus an ``OVERLAP_UM`` margin wider than any WBC; tiles without
  smear are skipped. Crops are read from the coarsest level with at least the model's input size over
  the card's ``fov_um``.
- :mod:`.zones`: thick / monolayer / sparse zones from the thumbnail (red-cell coverage in layers) and
  the counting area (``--area``: the monolayer when found, else all); :mod:`.reading` orders its tiles
  in a meander for ``--max-wbc``.
- :mod:`.detect` (workers): per tile, candidate nuclei from the nucleus-stain density at the detection
  resolution, grown into windows; each window is segmented there, and windows that are not a lone,
  clean WBC are read again at ``REFINE_MPP`` (0.25 um/px, only around candidates) and segmented with
  :func:`wbc_deploy.segment.segment_wbcs`. A cell belongs to the tile whose core holds its centroid
  (counted once across seams); its crop is read and resized with the preprocessing contract.
- :mod:`.engine`: a bounded window of tiles in flight on a thread or process pool, results taken in
  tile order, crops batched at fixed multiples of ``--batch-size`` in the slide's cell sequence (so
  results do not depend on worker count, timing or resumption), tiles committed to the
  :mod:`.store` (``DIR/.<slide>.partial/``) as they finish.
- :mod:`.outputs`: cells.csv, GeoJSON, truth comparison and summary.csv (with Wilson intervals from
  :mod:`wbc_deploy.stats`), written atomically; the slide's store is removed once they are in place.
  :mod:`.gallery` keeps per-class review cells; :mod:`.quality` measures each tile's focus.
"""
from __future__ import annotations

import importlib

#: Where each exported name lives. Loaded on first use (PEP 562), so a scan worker process, which imports
#: only :mod:`.detect`, does not import the whole count path (rich, the outputs, zoning, ...).
_EXPORTS = {
    "discover_inputs": "inputs", "slide_name": "inputs", "CountOptions": "options",
    "EXIT_INTERRUPTED": "result", "EXIT_OK": "result", "EXIT_SLIDES_FAILED": "result", "RunResult": "result",
    "SlideResult": "result", "TruthComparison": "result", "plan_scan": "plan", "CountInterrupted": "run",
    "count_slide": "run", "count_slides": "run", "resolve_mpp": "scale",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_SLIDES_FAILED",
    "CountInterrupted",
    "CountOptions",
    "RunResult",
    "SlideResult",
    "TruthComparison",
    "count_slide",
    "count_slides",
    "discover_inputs",
    "plan_scan",
    "resolve_mpp",
    "slide_name",
]
