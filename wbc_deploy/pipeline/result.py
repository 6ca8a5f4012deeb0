"""Results of a count run: one SlideResult per input, a RunResult for the whole run."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..classes import UNIDENTIFIED

#: Slide statuses in summary.csv.
STATUS_OK = "ok"
STATUS_ERROR = "error"
STATUS_PENDING = "pending"
STATUS_INTERRUPTED = "interrupted"

#: Exit codes of ``wbc-deploy count`` (also in the command's help).
EXIT_OK = 0
EXIT_USAGE = 2
EXIT_SLIDES_FAILED = 3
EXIT_INTERRUPTED = 130


@dataclass
class TruthComparison:
    """Detections matched to a slide's truth file within MATCH_UM micrometres."""

    n_truth: int
    n_detected: int
    n_matched: int
    truth_counts: dict[str, int]
    counted: dict[str, int]
    #: per class: matched pairs whose predicted class equals the true class
    correct: dict[str, int] = field(default_factory=dict)
    #: true labels that are not classes of the model (e.g. a 4-class model on a 5-class truth)
    unknown_labels: int = 0

    @property
    def n_correct(self) -> int:
        return int(sum(self.correct.values()))

    @property
    def recall(self) -> float:
        return self.n_matched / self.n_truth if self.n_truth else 1.0

    @property
    def precision(self) -> float:
        return self.n_matched / self.n_detected if self.n_detected else 1.0

    @property
    def accuracy(self) -> float:
        return self.n_correct / self.n_matched if self.n_matched else 0.0


@dataclass
class SlideResult:
    """One slide's outcome (one row of summary.csv)."""

    slide: str
    path: Path
    status: str = STATUS_PENDING
    error: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    mean_confidence: float | None = None
    seconds: float = 0.0
    backend: str = ""
    mpp: float | None = None
    mpp_source: str = ""
    tiles_total: int = 0
    tiles_scanned: int = 0
    tiles_resumed: int = 0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    #: candidate windows seen and refined at full resolution (this run's tiles only)
    windows: int = 0
    refined: int = 0
    truth: TruthComparison | None = None
    outputs: dict[str, Path] = field(default_factory=dict)
    #: provenance: SHA-256 of the model file(s) and a hash of the options that change the cells
    model_sha256: str = ""
    settings_sha256: str = ""
    #: a finished slide skipped by --resume: its summary.csv row from the earlier run, re-emitted as it was
    previous_row: dict[str, str] | None = None

    @property
    def n_wbc(self) -> int:
        """Every WBC detected, ``unidentified`` ones included."""
        return int(sum(self.counts.values()))

    @property
    def n_unidentified(self) -> int:
        return int(self.counts.get(UNIDENTIFIED, 0))

    @property
    def n_counted(self) -> int:
        """The differential's denominator: WBCs with a class (``unidentified`` ones left out)."""
        return self.n_wbc - self.n_unidentified

    def percentages(self, classes: list[str]) -> dict[str, float]:
        """The differential: per-class percentage of the counted WBCs (``unidentified`` left out; 0 when none)."""
        n = self.n_counted
        return {c: (100.0 * self.counts.get(c, 0) / n if n else 0.0) for c in classes}


@dataclass
class RunResult:
    """All slides of a run, the class order of the model and where summary.csv is."""

    slides: list[SlideResult]
    classes: list[str]
    out_dir: Path
    summary_path: Path
    backend: str = ""
    interrupted: bool = False

    @property
    def failed(self) -> list[SlideResult]:
        return [s for s in self.slides if s.status == STATUS_ERROR]

    @property
    def exit_code(self) -> int:
        """0 all counted; 3 some slide failed (see summary.csv); 130 the run was interrupted."""
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_SLIDES_FAILED if self.failed else EXIT_OK
