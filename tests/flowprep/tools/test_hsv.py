import math

import cv2
import numpy as np
import pytest

from flowprep.tools.hsv import DIRECTION_HUES, color_wheel, flow_hue, flow_to_rgb, legend


def field(u: float, v: float, h: int = 3, w: int = 4) -> np.ndarray:
    return np.stack([np.full((h, w), u, np.float32), np.full((h, w), v, np.float32)])


def hue_of(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb.reshape(-1, 1, 3).astype(np.float32) / 255, cv2.COLOR_RGB2HSV)[:, 0, 0]


@pytest.mark.parametrize(
    "name, uv, expected",
    [
        ("right", (1, 0), (255, 0, 0)),  # red
        ("down", (0, 1), (128, 255, 0)),  # hue 90: yellow-green
        ("left", (-1, 0), (0, 255, 255)),  # cyan
        ("up", (0, -1), (128, 0, 255)),  # hue 270: violet
    ],
)
def test_documented_hue_per_direction(name: str, uv: tuple[int, int], expected: tuple[int, int, int]) -> None:
    assert flow_hue(np.float32(uv[0]), np.float32(uv[1])) == pytest.approx(DIRECTION_HUES[name])
    rgb = flow_to_rgb(field(3.0 * uv[0], 3.0 * uv[1]), max_flow=3.0)
    assert rgb.shape == (3, 4, 3) and rgb.dtype == np.uint8
    np.testing.assert_allclose(rgb.reshape(-1, 3), np.tile(expected, (12, 1)), atol=1)


def test_magnitude_is_value_and_clipped_at_max() -> None:
    for mag in (0.5, 1.0, 2.0, 3.0):
        rgb = flow_to_rgb(field(mag, 0.0), max_flow=2.0)
        assert rgb[0, 0].tolist() == [round(255 * min(mag / 2.0, 1.0)), 0, 0]
    # Value follows |f| in any direction, not just u.
    diag = flow_to_rgb(field(-0.6, 0.8), max_flow=2.0)  # |f| = 1
    assert cv2.cvtColor(diag[:1, :1], cv2.COLOR_RGB2HSV)[0, 0, 2] == pytest.approx(128, abs=1)


def test_zero_flow_is_black() -> None:
    assert not flow_to_rgb(field(0.0, 0.0), max_flow=1.0).any()


def test_hue_turns_continuously_with_the_angle() -> None:
    angles = np.arange(0, 360, 7.5)
    u, v = np.cos(np.radians(angles)), np.sin(np.radians(angles))
    rgb = flow_to_rgb(np.stack([u, v])[:, None, :].astype(np.float32), max_flow=1.0)[0]
    got = hue_of(rgb)
    diff = (got - angles + 180) % 360 - 180
    assert np.abs(diff).max() < 1.5


def test_wheel_colour_at_each_angle_is_the_colouring_of_that_direction() -> None:
    size = 121
    wheel = color_wheel(size, background=(7, 8, 9))
    c = (size - 1) / 2
    for deg in range(0, 360, 15):
        a = math.radians(deg)
        x, y = round(c + 0.8 * c * math.cos(a)), round(c + 0.8 * c * math.sin(a))  # y downward
        dx, dy = (x - c) / c, (y - c) / c
        expected = flow_to_rgb(field(dx * 5.0, dy * 5.0, 1, 1), max_flow=5.0)[0, 0]
        assert np.abs(wheel[y, x].astype(int) - expected).max() <= 1, deg
        assert abs((hue_of(wheel[y, x])[0] - deg + 180) % 360 - 180) < 2.5, deg
    assert wheel[0, 0].tolist() == [7, 8, 9]  # outside the disc
    assert not wheel[60, 60].any()  # the centre is zero flow


def test_legend_and_errors() -> None:
    panel = legend(max_flow=2.5, width=200, wheel_size=120)
    assert panel.dtype == np.uint8 and panel.shape[1] == 200
    assert (panel[40:160, 40:160] == color_wheel(120)).all()
    with pytest.raises(ValueError, match=r"expected flow of shape \(2, H, W\), got \(3, 4, 2\)"):
        flow_to_rgb(np.zeros((3, 4, 2)), max_flow=1.0)
    with pytest.raises(ValueError, match="max_flow must be > 0"):
        flow_to_rgb(field(1, 0), max_flow=0.0)
