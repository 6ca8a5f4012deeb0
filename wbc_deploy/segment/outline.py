"""Cell outlines as optimal closed contours in polar coordinates (dynamic programming), many cells at once.

Around each cell, rays leave its centre at ``n_angles`` angles and are sampled every outline pixel
out to ``max_radius_um``. Each sample scores how much it looks like cytoplasm (the field's
:class:`~.colour.ColourModel`: +, glass or other stained matter: -; glass costs extra, so an outline
never crosses glass to reach a neighbour). The outline is the radius per angle that maximises the
area-weighted sum of the scores inside it plus an edge term (optical density falling outwards), with
the radius changing by at most ``max_step_um`` between neighbouring angles and paying
``step_cost`` per step (a smoothness prior in micrometres): a closed star-shaped contour around
the nucleus. This is the classical optimal-contour formulation (dynamic programming over a polar
unwrap, closed by unrolling the angles three times and keeping the middle turn).

Constraints: the contour encloses the cell's nucleus on every ray, and samples that belong to
another cell (its watershed region or its nucleus) count as strongly outside.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Score of a sample that belongs to another cell, or lies outside the image: never inside.
FORBIDDEN = -1e4


@dataclass(frozen=True)
class PolarGrid:
    """Rays of one batch: ``n_angles`` angles, ``n_radii`` samples ``step_px`` apart (outline pixels)."""

    n_angles: int
    n_radii: int
    step_px: float

    @property
    def angles(self) -> np.ndarray:
        return np.arange(self.n_angles) * (2.0 * math.pi / self.n_angles)

    @property
    def radii(self) -> np.ndarray:
        return np.arange(self.n_radii) * self.step_px

    def points(self, cy: float, cx: float) -> tuple[np.ndarray, np.ndarray]:
        """Sample coordinates (rows, cols), each n_angles x n_radii, around centre (cy, cx)."""
        th = self.angles
        r = self.radii
        return cy + np.sin(th)[:, None] * r[None, :], cx + np.cos(th)[:, None] * r[None, :]


def closed_contours(score: np.ndarray, min_index: np.ndarray, max_step: int, step_cost: float) -> np.ndarray:
    """Radius index per angle (n x A) of the best closed contour of each of n cells.

    ``score[k, a, r]`` is the gain of putting cell k's contour at radius index r on angle a (the
    cumulative inside score plus edge terms); ``min_index[k, a]`` the smallest allowed radius index
    (the nucleus). Neighbouring angles differ by at most ``max_step`` indices, each index of change
    costing ``step_cost``. Closed by unrolling the angles: half a turn in, the turn that is kept,
    half a turn out (optimal paths merge within a few angles, so the kept turn starts and ends where
    its neighbours lead it). Ties go to the smaller radius (deterministic).
    """
    n, A, R = score.shape
    k = int(max_step)
    idx = np.arange(R)
    s = np.where(idx[None, None, :] >= np.minimum(min_index, R - 1)[:, :, None], score, -np.inf)
    natural = step_cost * np.abs(np.arange(-k, k + 1))  # penalty of each move in window order (offset j - k)
    lead = A // 2
    turns = lead + A + lead
    back = np.empty((turns, n, R), np.int8)
    acc = s[:, -lead % A].copy()
    padded = np.full((n, R + 2 * k), -np.inf)
    window = np.lib.stride_tricks.sliding_window_view(padded, 2 * k + 1, axis=1)  # [., r, j] = acc[r + j - k]
    moved = np.empty((n, R, 2 * k + 1))
    rows = np.arange(n)[:, None]
    cols = np.arange(R)[None, :]
    for t in range(1, turns):
        padded[:, k:k + R] = acc
        np.subtract(window, natural, out=moved)
        j = moved.argmax(axis=-1)
        back[t] = j
        acc = moved[rows, cols, j] + s[:, (t - lead) % A]
    path = np.empty((turns, n), np.int64)
    path[-1] = np.argmax(acc, axis=1)
    flat = np.arange(n)
    for t in range(turns - 1, 0, -1):
        path[t - 1] = path[t] + back[t, flat, path[t]] - k
    return path[lead:lead + A].T.copy()


def contour_gain(inside: np.ndarray, edge: np.ndarray, radii_um: np.ndarray, step_um: float, edge_weight: float) -> np.ndarray:
    """Gain of ending a contour at each radius: the area-weighted cumulative inside score plus the edge term.

    ``inside``/``edge``: (..., R) per-sample scores (log likelihood ratios; OD drop per um).
    A sample at radius r stands for the area r * dr * dtheta, so the sum is in um^2 per radian.
    """
    area = (radii_um + 0.5 * step_um) * step_um
    return np.cumsum(inside * area, axis=-1) + edge_weight * edge * (radii_um + step_um)
