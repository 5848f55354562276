import numpy as np
import pytest

from flowprep.extract.quantize import NonFiniteFlow, dequantize, quantize, scale_and_offset


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


def _reference(f: np.ndarray, bound: float) -> np.ndarray:
    return np.rint((np.clip(f, -bound, bound) + bound) * 255 / (2 * bound)).astype(np.uint8)


@pytest.mark.parametrize("shape", [(7,), (5, 3), (4, 2, 6, 9), (6, 9, 2)])
def test_fast_path_matches_numpy_reference_on_any_shape(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    f = (rng.standard_normal(shape) * 15).astype(np.float32)
    # include exact half-steps, where rounding mode matters
    assert np.array_equal(quantize(f, 20.0), _reference(f, 20.0))


def test_half_steps_differ_from_float64_reference_by_at_most_one_level() -> None:
    # quantize() works in float32 arithmetic: a value within float32 precision of a half step may land
    # on either neighbour (both within B/255 + 1e-5 of it); everywhere else it is the exact formula.
    bound = 20.0
    q_half = np.arange(0, 255) + 0.5
    f = (q_half * 2 * bound / 255 - bound).astype(np.float32)
    got, ref = quantize(f, bound).astype(int), _reference(f, bound).astype(int)
    assert np.abs(got - ref).max() <= 1
    exact = (f.astype(np.float64) + bound) * 255 / (2 * bound)
    differ = got != ref
    assert np.all(np.abs(exact[differ] - np.floor(exact[differ]) - 0.5) < 1e-4)


def test_non_contiguous_and_float64_input() -> None:
    rng = np.random.default_rng(1)
    f = rng.uniform(-30, 30, size=(8, 10, 2))
    view = f.transpose(2, 0, 1)  # (2, 8, 10), not contiguous, float64
    assert np.array_equal(quantize(view, 20.0), _reference(view.astype(np.float32), 20.0))


def test_infinite_and_huge_flow_saturate_instead_of_wrapping_to_code_zero() -> None:
    # cv2.addWeighted converts to uint8 through int32: 1e30 px and +inf used to come out as 0 (= -bound).
    f = np.array([np.inf, -np.inf, 1e30, -1e30, 4e8, -4e8, 19.0, -20.0], np.float32)
    assert quantize(f, 20.0).tolist() == [255, 0, 255, 0, 255, 0, 249, 0]
    assert quantize(f.reshape(2, 2, 2), 12.0).reshape(-1).tolist() == [255, 0, 255, 0, 255, 0, 255, 0]


def test_nan_flow_raises_instead_of_becoming_code_zero() -> None:
    f = np.zeros((3, 2, 4, 5), np.float32)
    f[1, 0, 2, 3] = np.nan
    with pytest.raises(NonFiniteFlow, match="NaN at 1 of 120 values"):
        quantize(f, 20.0)
