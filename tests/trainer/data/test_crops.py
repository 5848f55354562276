import numpy as np
import pytest

from trainer.data.crops import (
    EVAL_RESIZE_RATIO, MULTISCALE_SCALES, center_crop_box, crop_resize, eval_views, five_crop_boxes,
    multiscale_crop_box, random_resized_crop_box, train_crop_box, train_window, window_origin,
)
from trainer.data.transforms import hflip_flow_uint8


def test_multiscale_crop_boxes_follow_tsn() -> None:
    rng = np.random.default_rng(0)
    h, w = 240, 320
    sizes = [int(240 * s) for s in MULTISCALE_SCALES]
    seen_pos, seen_sizes = set(), set()
    for _ in range(2000):
        y0, x0, ch, cw = multiscale_crop_box(h, w, rng)
        assert ch in sizes and cw in sizes and abs(sizes.index(ch) - sizes.index(cw)) <= 1
        assert 0 <= y0 <= h - ch and 0 <= x0 <= w - cw
        dy, dx = (h - ch) // 4, (w - cw) // 4
        pos = {(0, 0): "tl", (0, 4 * dx): "tr", (4 * dy, 0): "bl", (4 * dy, 4 * dx): "br", (2 * dy, 2 * dx): "c"}
        seen_pos.add(pos[(y0, x0)])
        seen_sizes.add((ch, cw))
    assert seen_pos == {"tl", "tr", "bl", "br", "c"}
    assert len(seen_sizes) == 4 + 2 * 3  # 4 square + 3 adjacent pairs each way


def test_random_resized_crop_boxes_stay_in_range() -> None:
    rng = np.random.default_rng(1)
    areas = []
    for _ in range(2000):
        y0, x0, ch, cw = random_resized_crop_box(240, 320, rng)
        assert 0 <= y0 <= 240 - ch and 0 <= x0 <= 320 - cw and ch > 0 and cw > 0
        areas.append(ch * cw / (240 * 320))
        if ch < 240 and cw < 320:  # not the fallback
            assert 3 / 4 - 0.02 <= cw / ch <= 4 / 3 + 0.02
    assert min(areas) < 0.15 and max(areas) > 0.9


def test_eval_boxes_match_resize_then_crop() -> None:
    side = round(240 / EVAL_RESIZE_RATIO)  # 224 of a 256-short-side frame, in 240-frame pixels
    assert center_crop_box(240, 320) == ((240 - side) // 2, (320 - side) // 2, side, side)
    boxes = five_crop_boxes(240, 320)
    assert boxes[:4] == [(0, 0, side, side), (0, 320 - side, side, side), (240 - side, 0, side, side),
                         (240 - side, 320 - side, side, side)]
    assert boxes[4] == center_crop_box(240, 320)


def test_crop_resize_returns_resize_factors_and_keeps_constant_fields() -> None:
    chw = np.zeros((4, 30, 50), np.uint8)
    chw[0], chw[1] = 77, 201
    chw[2] = np.arange(50, dtype=np.uint8)[None, :]
    out, sx, sy = crop_resize(chw, (5, 10, 20, 25), 40)
    assert out.shape == (4, 40, 40) and (sx, sy) == (40 / 25, 40 / 20)
    assert (out[0] == 77).all() and (out[1] == 201).all()
    assert out[2, 0, 0] >= 10 and out[2, 0, -1] <= 34 and (np.diff(out[2, 0].astype(int)) >= 0).all()
    same, sx, sy = crop_resize(chw, (0, 0, 30, 30), 30)
    np.testing.assert_array_equal(same, chw[:, :, :30])
    with pytest.raises(ValueError, match="does not fit"):
        crop_resize(chw, (10, 40, 30, 20), 16)


def test_train_crop_box_dispatches_and_rejects_unknown_policies() -> None:
    rng = np.random.default_rng(3)
    y0, x0, ch, cw = train_crop_box(240, 320, rng, crop="multiscale", scales=(0.5,))
    assert (ch, cw) == (120, 120)
    assert train_crop_box(240, 320, np.random.default_rng(4), crop="resized") == random_resized_crop_box(
        240, 320, np.random.default_rng(4))
    with pytest.raises(ValueError, match=r"crop must be one of \('multiscale', 'resized'\), got 'tsn'"):
        train_crop_box(240, 320, rng, crop="tsn")


def test_eval_views_order_and_flips() -> None:
    rng = np.random.default_rng(5)
    items = [rng.integers(0, 256, (4, 30, 40), dtype=np.uint8) for _ in range(2)]
    views, scales = eval_views(items, crops=10, size=16, flip=hflip_flow_uint8)
    assert views.shape == (20, 4, 16, 16) and scales.shape == (20, 2) and scales.dtype == np.float32
    for k, item in enumerate(items):
        for b, box in enumerate(five_crop_boxes(30, 40)):
            want = crop_resize(item, box, 16)[0]
            np.testing.assert_array_equal(views[10 * k + b], want)
            np.testing.assert_array_equal(views[10 * k + 5 + b], hflip_flow_uint8(np.ascontiguousarray(want)))
    one, _ = eval_views(items, crops=1, size=16, flip=hflip_flow_uint8)
    np.testing.assert_array_equal(one, views[[4, 14]])  # the centre crop


def test_train_window_holds_every_box_of_the_policy() -> None:
    rng = np.random.default_rng(7)
    assert train_window(240, 320, crop="multiscale") == (240, 240)
    assert train_window(240, 320, crop="resized") == (240, 320)
    for crop in ("multiscale", "resized"):
        win = train_window(240, 320, crop=crop)
        for _ in range(500):
            y0, x0, h, w = train_crop_box(240, 320, rng, crop=crop)
            wy, wx = window_origin((y0, x0, h, w), win, 240, 320)
            assert 0 <= wy <= y0 and y0 + h <= wy + win[0] <= 240
            assert 0 <= wx <= x0 and x0 + w <= wx + win[1] <= 320
