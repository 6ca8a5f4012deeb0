"""The count stream: slides -> tiles -> WBC detection -> batched classification -> differential counts.

``count_slides(inputs, model, out_dir, CountOptions(...))`` is the library entry point of
``wbc-deploy count``. Torch-free (the torch backend imports torch only when chosen).
"""
from __future__ import annotations

from .inputs import discover_inputs, slide_name
from .options import CountOptions
from .result import EXIT_INTERRUPTED, EXIT_OK, EXIT_SLIDES_FAILED, RunResult, SlideResult, TruthComparison
from .plan import plan_scan
from .run import CountInterrupted, count_slide, count_slides
from .scale import resolve_mpp

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
