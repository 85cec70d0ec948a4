"""GlaS object metrics on hand-computed cases (missed, spurious, merged, split glands)."""

import math

import numpy as np
import pytest

from iste.downstream.gland_metrics import (GlandCounts, gland_counts, gland_metrics,
                                           label_glands, pooled_gland_metrics)


def labels(*boxes, shape=(20, 50)):
    """Label map with object k+1 = rows r0:r1, cols c0:c1 of ``boxes[k]``."""
    out = np.zeros(shape, np.int32)
    for k, (r0, r1, c0, c1) in enumerate(boxes):
        out[r0:r1, c0:c1] = k + 1
    return out


def test_perfect_segmentation_with_other_label_values():
    truth = labels((0, 10, 0, 10), (0, 10, 30, 40))
    pred = np.where(truth > 0, 7 - truth, 0)  # same objects, other numbers
    assert gland_metrics(pred, truth) == {"f1": 1.0, "object_dice": 1.0, "object_hausdorff": 0.0}


def test_missed_gland():
    truth = labels((0, 10, 0, 10), (0, 10, 30, 40))
    pred = labels((0, 10, 0, 10))
    c = gland_counts(pred, truth)
    assert (c.tp, c.fp, c.fn) == (1, 0, 1)
    assert c.f1 == pytest.approx(2 / 3)
    # truth side: 0.5 * 1 + 0.5 * 0 (nothing overlaps the missed gland); pred side: 1
    assert c.object_dice == pytest.approx(0.75)
    # the missed gland's partner is the nearest predicted object: a 30 px shift
    assert c.object_hausdorff == pytest.approx(0.5 * (0.5 * 0 + 0.5 * 30) + 0.5 * 0)


def test_spurious_detection():
    truth = labels((0, 10, 0, 10))
    pred = labels((0, 10, 0, 10), (0, 10, 30, 40))
    c = gland_counts(pred, truth)
    assert (c.tp, c.fp, c.fn) == (1, 1, 0)
    assert c.object_dice == pytest.approx(0.75)
    assert c.object_hausdorff == pytest.approx(7.5)


def test_merged_glands():
    truth = labels((0, 10, 0, 10), (0, 10, 12, 22))
    pred = labels((0, 10, 0, 22))  # one object over both glands and the gap (220 px)
    c = gland_counts(pred, truth)
    assert (c.tp, c.fp, c.fn) == (1, 0, 1)
    assert c.object_dice == pytest.approx(200 / 320)
    assert c.object_hausdorff == pytest.approx(12.0)  # col 21 of the merge to col 9 of gland 1


def test_split_gland():
    truth = labels((0, 10, 0, 20))  # 200 px
    pred = labels((0, 10, 0, 12), (0, 10, 12, 20))  # 120 px (60 %: detected) and 80 px (40 %)
    c = gland_counts(pred, truth)
    assert (c.tp, c.fp, c.fn) == (1, 1, 0)
    truth_side = 240 / 320
    pred_side = 0.6 * 240 / 320 + 0.4 * 160 / 280
    assert c.object_dice == pytest.approx(0.5 * (truth_side + pred_side))
    # H(G, S1) = 8 (col 19 to col 11), H(G, S2) = 12 (col 0 to col 12)
    assert c.object_hausdorff == pytest.approx(0.5 * (8 + (0.6 * 8 + 0.4 * 12)))


def test_detection_needs_half_the_gland():
    truth = labels((0, 10, 0, 10))
    assert gland_counts(labels((0, 5, 0, 10)), truth).tp == 1  # exactly 50 %
    c = gland_counts(labels((0, 4, 0, 10)), truth)  # 40 %
    assert (c.tp, c.fp, c.fn) == (0, 1, 1)
    assert c.f1 == 0.0


def test_nearest_partner_is_by_hausdorff_distance():
    # the prediction overlaps nothing; its nearest pixel is on gland 1 (4 px away), but by
    # Hausdorff distance gland 2 is nearer (7 px against 36.3)
    truth = labels((0, 2, 0, 40), (12, 14, 0, 4), shape=(20, 50))
    pred = labels((5, 7, 0, 4), shape=(20, 50))
    c = gland_counts(pred, truth)
    h1 = math.hypot(5, 36)  # gland 1's far end (0, 39) to the prediction's (5, 3)
    assert c.object_hausdorff == pytest.approx(0.5 * ((80 / 88) * h1 + (8 / 88) * 7) + 0.5 * 7)


def test_empty_maps():
    empty = np.zeros((8, 8), np.int32)
    some = labels((0, 4, 0, 4), shape=(8, 8))
    assert gland_metrics(empty, empty) == {"f1": 1.0, "object_dice": 1.0, "object_hausdorff": 0.0}
    m = gland_metrics(empty, some)
    assert m["f1"] == 0.0 and m["object_dice"] == 0.0 and math.isinf(m["object_hausdorff"])
    assert gland_counts(some, empty).fp == 1


def test_bad_input():
    with pytest.raises(ValueError, match="one shape"):
        gland_metrics(np.zeros((4, 4), int), np.zeros((4, 5), int))
    with pytest.raises(ValueError, match="integer"):
        gland_metrics(np.zeros((4, 4)), np.zeros((4, 4), int))


def test_pooled_f1_sums_counts():
    pooled = pooled_gland_metrics([GlandCounts(3, 1, 0), GlandCounts(0, 0, 2)])
    assert pooled["f1"] == pytest.approx(6 / (6 + 1 + 2))
    assert (pooled["tp"], pooled["fp"], pooled["fn"], pooled["images"]) == (3, 1, 2, 2)


def test_a_split_weighs_each_gland_by_its_area_among_all_the_splits_glands():
    # the challenge pools the objects of the whole test set; the mean of the images' scores
    # gave an image of one small gland the weight of an image of a large one, and an image
    # without glands (either side) pulled the mean towards Dice 1 and Hausdorff 0
    big = labels((0, 10, 0, 20))  # 200 px, found exactly
    small, half = labels((0, 4, 0, 5)), labels((0, 2, 0, 5))  # 20 px; its top 10 px found
    empty = np.zeros((20, 50), np.int32)
    counts = [gland_counts(big, big), gland_counts(half, small), gland_counts(empty, empty)]
    assert counts[1].object_dice == pytest.approx(2 * 10 / 30)  # per image: as before
    assert counts[1].object_hausdorff == pytest.approx(2.0)  # row 3 to row 1
    pooled = pooled_gland_metrics(counts)
    assert pooled["f1"] == 1.0
    truth_side = (200 * 1 + 20 * (2 / 3)) / 220
    seg_side = (200 * 1 + 10 * (2 / 3)) / 210
    assert pooled["object_dice"] == pytest.approx(0.5 * (truth_side + seg_side))
    assert pooled["object_hausdorff"] == pytest.approx(0.5 * (20 * 2 / 220 + 10 * 2 / 210))
    # glands on one side only somewhere in the split: no partner, Hausdorff inf (the
    # challenge's code), and those glands' Dice is 0 at their area's weight
    missed = pooled_gland_metrics([*counts, gland_counts(empty, small)])
    assert math.isinf(missed["object_hausdorff"])
    assert missed["object_dice"] == pytest.approx(
        0.5 * ((200 + 20 * (2 / 3)) / 240 + seg_side))
    nothing = pooled_gland_metrics([gland_counts(empty, empty)] * 2)
    assert (nothing["object_dice"], nothing["object_hausdorff"]) == (1.0, 0.0)


def test_label_glands_opens_bridges_and_drops_specks():
    fg = np.zeros((40, 60), bool)
    fg[5:25, 5:25] = True
    fg[5:25, 35:55] = True
    fg[14:16, 25:35] = True  # a 2 px bridge joining the two glands
    fg[35:37, 2:4] = True  # a 4 px speck
    assert label_glands(fg, opening_radius=0, min_area=0).max() == 2  # joined + speck
    glands = label_glands(fg, opening_radius=2, min_area=20)
    assert glands.max() == 2
    assert glands[15, 10] != glands[15, 45] and glands[15, 30] == 0 and glands[36, 3] == 0
