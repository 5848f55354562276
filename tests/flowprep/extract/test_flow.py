import numpy as np
import pytest
from media import translating_texture

from flowprep.config import FarnebackParams, FlowConfig, TVL1Params
from flowprep.extract.flow import FlowEstimator, estimator_for, iter_flow, to_gray, video_flow


@pytest.mark.parametrize("method", ["farneback", "tvl1"])
def test_known_translation_gives_u_right_v_down(method: str) -> None:
    dx, dy = 1.5, -1.0
    frames = translating_texture(3, 64, 80, dx, dy, seed=1)
    flow = np.concatenate(list(video_flow([frames], FlowEstimator(method=method))))
    assert flow.shape == (2, 2, 64, 80) and flow.dtype == np.float32
    u, v = flow[:, 0, 12:-12, 12:-12].mean(), flow[:, 1, 12:-12, 12:-12].mean()
    assert (u, v) == (pytest.approx(dx, abs=0.1), pytest.approx(dy, abs=0.1))


def test_chunk_boundaries_do_not_change_the_flow() -> None:
    frames = translating_texture(7, 32, 40, 0.5, 1.0, seed=2)
    est = FlowEstimator(method="farneback")
    whole = list(iter_flow([frames], est))
    assert len(whole) == 1 and whole[0][1].shape == (6, 2, 32, 40)
    parts = list(iter_flow([frames[:3], frames[3:4], frames[4:]], est))
    assert [len(f) for _, f in parts] == [2, 1, 3]  # first chunk n-1, then n (previous frame kept)
    np.testing.assert_array_equal(np.concatenate([f for _, f in parts]), whole[0][1])
    np.testing.assert_array_equal(np.concatenate([rgb for rgb, _ in parts]), frames)


def test_single_frame_first_chunk_yields_no_flow() -> None:
    frames = translating_texture(2, 16, 16, 0.0, 0.0)
    parts = list(iter_flow([frames[:1], frames[1:]], FlowEstimator(method="farneback")))
    assert [f.shape for _, f in parts] == [(0, 2, 16, 16), (1, 2, 16, 16)]


def test_tvl1_parameters_reach_opencv_and_the_solver_is_reused() -> None:
    params = TVL1Params(tau=0.2, lambda_=0.1, nscales=3, warps=2, inner_iterations=7, median_filtering=3)
    config = FlowConfig(method="tvl1", tvl1=params)
    est = estimator_for(config)
    solver = est._tvl1
    assert (solver.getTau(), solver.getLambda(), solver.getScalesNumber(), solver.getWarpingsNumber(),
            solver.getInnerIterations(), solver.getMedianFiltering()) == pytest.approx((0.2, 0.1, 3, 2, 7, 3))
    assert estimator_for(FlowConfig(method="tvl1", tvl1=params)) is est  # one solver per process
    assert estimator_for(FlowConfig(method="farneback")) is not est


def test_farneback_parameters_matter() -> None:
    frames = to_gray(translating_texture(2, 48, 48, 2.0, 0.0, seed=3))
    a = FlowEstimator(method="farneback")(frames[0], frames[1])
    b = FlowEstimator(method="farneback", farneback=FarnebackParams(levels=1, winsize=5))(frames[0], frames[1])
    assert not np.allclose(a, b)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="expected RGB uint8 frames"):
        to_gray(np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="method must be"):
        FlowEstimator(method="lucas-kanade")
