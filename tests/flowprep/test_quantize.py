import numpy as np
import pytest

from flowprep.quantize import dequantize, quantize, scale_and_offset


@pytest.mark.parametrize("bound", [20.0, 7.5, 1.0])
def test_round_trip_error_within_half_step_inside_bound(bound: float) -> None:
    f = np.linspace(-bound, bound, 10001, dtype=np.float32)
    scale, offset = scale_and_offset(bound)
    back = dequantize(quantize(f, bound), scale, offset)
    err = np.abs(back - f)
    # Rounding to the nearest of 256 levels spread over 2B: at most half a step = B/255.
    assert err.max() <= bound / 255 + 1e-5
    assert err.max() > bound / 255 * 0.9  # the bound is tight: the grid really has 256 levels


def test_endpoints_and_clipping() -> None:
    q = quantize(np.array([-20.0, 20.0, -1e6, 1e6, -20.0001, 25.0]), 20.0)
    assert q.tolist() == [0, 255, 0, 255, 0, 255]
    scale, offset = scale_and_offset(20.0)
    assert dequantize(np.array([0, 255], np.uint8), scale, offset).tolist() == pytest.approx([-20.0, 20.0])


def test_formula_matches_spec() -> None:
    # q = round((f + B) * 255 / (2B)) for B = 20
    f = np.array([0.0, 3.3, -7.1, 12.0])
    assert quantize(f, 20.0).tolist() == np.rint((f + 20) * 255 / 40).astype(int).tolist()


def test_bad_bound() -> None:
    with pytest.raises(ValueError, match="bound must be > 0"):
        quantize(np.zeros(3), 0.0)
