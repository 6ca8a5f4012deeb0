"""The chromatin merge of segmentation on hand-drawn label images (no rendering): which regions it joins."""
from __future__ import annotations

import numpy as np

from wbc_deploy.segment import SegmentParams
from wbc_deploy.segment.core import _merge_by_chromatin

MPP = 0.5  # um/px: the thick-chromatin opening has a radius of 0.8 um, under 2 px


def _disk(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_a_piece_cut_off_a_nucleus_goes_back_to_its_owner() -> None:
    shape = (40, 80)
    regions = np.zeros(shape, np.int32)
    regions[:, :30] = 1
    regions[:, 30:] = 2
    regions[:, 60:] = 3  # a third cell with its own nucleus, untouched
    chrom = _disk(shape, 20, 22, 9) | _disk(shape, 20, 70, 6)  # region 2 holds a 1-2 px sliver of nucleus 1 only
    out = _merge_by_chromatin(regions, chrom, MPP, SegmentParams())
    assert set(np.unique(out[:, 30:60])) == {1}  # region 2 became region 1
    assert set(np.unique(out[:, :30])) == {1}
    assert set(np.unique(out[:, 60:])) == {3}


def test_touching_nuclei_each_in_their_own_region_stay_apart() -> None:
    shape = (40, 80)
    regions = np.zeros(shape, np.int32)
    regions[:, :40] = 1
    regions[:, 40:] = 2
    chrom = _disk(shape, 20, 31, 9) | _disk(shape, 20, 49, 9)  # two nuclei touching across the border
    out = _merge_by_chromatin(regions, chrom, MPP, SegmentParams())
    np.testing.assert_array_equal(out, regions)


def test_many_pieces_merge_like_one_at_a_time() -> None:
    """The one-pass walk over (piece, region) pairs gives, piece by piece, what each piece alone gives."""
    tile = (40, 80)
    rows = []
    expected_rows = []
    for k in range(6):
        regions = np.zeros(tile, np.int32)
        regions[:, :30] = 1
        regions[:, 30:] = 2
        cut = k % 2 == 0  # even tiles: a sliver over the border; odd tiles: two separate nuclei
        chrom = _disk(tile, 20, 22, 9) if cut else (_disk(tile, 20, 12, 7) | _disk(tile, 20, 50, 7))
        alone = _merge_by_chromatin(regions, chrom, MPP, SegmentParams())
        rows.append((regions + 2 * k, chrom))
        expected_rows.append(alone + 2 * k)
    regions = np.concatenate([r for r, _ in rows])
    chrom = np.concatenate([c for _, c in rows])
    out = _merge_by_chromatin(regions, chrom, MPP, SegmentParams())
    np.testing.assert_array_equal(out, np.concatenate(expected_rows))
    assert len(np.unique(out)) == 3 * 1 + 3 * 2  # three tiles merged, three kept apart
