"""Numbers on the command line that no run can use are usage errors (exit 2, one line), found before any work.

click's FloatRange lets NaN and infinity through (they compare False with every bound), and OpenCV takes
any flow parameter: outside its range it asserts in every worker (each video then recorded as a bad file),
returns zero or NaN flow without a word, or corrupts its memory.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from flowprep.cli import main


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.mark.parametrize(
    "extra",
    [
        ["--bound", "nan"], ["--bound", "inf"], ["--tvl1-tau", "nan"], ["--tvl1-gamma", "nan"],
        ["--farneback-poly-sigma", "inf"],
    ],
)
def test_a_non_finite_number_is_a_usage_error_not_a_crash_of_the_run(tmp_path: Path, extra: list[str]) -> None:
    out = tmp_path / "out"
    result = invoke("extract", "--videos", str(tmp_path), "--out", str(out), *extra)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{extra[0]}'" in result.output and "is not a finite number" in result.output
    assert "Traceback" not in result.output and not out.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tvl1-median-filtering", "4"], "4 is even: a median filter size is 1 (none), 3 or 5"),
        (["--tvl1-median-filtering", "7"], "7 is not in the range 1<=x<=5"),
        (["--tvl1-nscales", "0"], "0 is not in the range x>=1"),
        (["--tvl1-theta", "0"], "0.0 is not in the range x>0"),  # NaN flow
        (["--tvl1-warps", "0"], "0 is not in the range x>=1"),  # zero flow
        (["--tvl1-scale-step", "1.5"], "1.5 is not in the range 0<x<=1"),
        (["--farneback-winsize", "-5"], "-5 is not in the range x>=1"),  # OpenCV: double free, worker killed
        (["--farneback-iterations", "0"], "0 is not in the range x>=1"),  # zero flow
        (["--farneback-pyr-scale", "1.5"], "1.5 is not in the range 0<x<1"),
    ],
)
def test_a_flow_parameter_opencv_cannot_use_is_refused_before_any_video(
    tmp_path: Path, extra: list[str], message: str
) -> None:
    out = tmp_path / "out"
    result = invoke("extract", "--videos", str(tmp_path), "--out", str(out), *extra)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{extra[0]}': {message}" in result.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "shown"),
    [
        (["--tvl1-theta", "1e-40"], "theta 1e-40"),  # under float32's smallest normal number
        (["--tvl1-tau", "3e38"], "tau 3e+38"),
        (["--tvl1-gamma", "1e39"], "gamma 1e+39"),
        (["--tvl1-tau", "1e30", "--tvl1-theta", "1e-30"], "tau 1e+30, lambda 0.15, theta 1e-30"),  # tau/theta
    ],
)
def test_tvl1_values_that_overflow_float32_are_refused_before_any_video(
    tmp_path: Path, extra: list[str], shown: str
) -> None:
    # each is a finite positive number, but OpenCV's float32 arithmetic turns every flow field into NaN: every video
    # failed on its own and the run ended with exit 1, as if the files were bad
    videos = tmp_path / "videos" / "A"
    videos.mkdir(parents=True)
    (videos / "a.avi").write_bytes(b"not read: the parameters are refused first")
    out = tmp_path / "out"
    result = invoke("extract", "--videos", str(tmp_path / "videos"), "--out", str(out), "--method", "tvl1", *extra)
    assert result.exit_code == 2, result.output
    assert "Error: TV-L1 with tau " in result.output and shown in result.output and "gives NaN flow" in result.output
    assert "Traceback" not in result.output and not out.exists()


def test_tvl1_values_far_from_the_defaults_that_stay_finite_are_accepted(tmp_path: Path) -> None:
    from flowprep.config import TVL1Params
    from flowprep.extract.flow import check_tvl1_params

    for params in (TVL1Params(), TVL1Params(theta=1e-30), TVL1Params(lambda_=1e30, theta=1e30, nscales=1, warps=1)):
        check_tvl1_params(params)  # no error


def test_the_defaults_and_the_documented_choices_of_the_flow_parameters_are_accepted() -> None:
    text = " ".join(invoke("extract", "--help").output.split())
    assert "--tvl1-median-filtering INTEGER RANGE median filter size applied to the flow (1 = none, 3 or 5)" in text
    assert "[default: 5; 1<=x<=5]" in text and "[default: 0.5; 0<x<1]" in text


@pytest.mark.parametrize(
    "args",
    [
        ["import-frames", "--frames", "{tmp}", "--out", "{tmp}/out", "--layout", "mmaction", "--bound", "inf"],
        ["import-frames", "--frames", "{tmp}", "--out", "{tmp}/out", "--layout", "mmaction", "--bound", "nan"],
        ["preview", "{tmp}", "A/x", "--out", "{tmp}/x.png", "--max-flow", "nan"],
    ],
)
def test_the_tools_refuse_non_finite_numbers_too(tmp_path: Path, args: list[str]) -> None:
    result = invoke(*[a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2 and "is not a finite number" in result.output, result.output


@pytest.mark.parametrize("command", [["extract", "--videos", "{tmp}"], ["import-frames", "--frames", "{tmp}",
                                                                        "--layout", "mmaction"]])
@pytest.mark.parametrize("bound", ["1e308", "1e-50"])
def test_a_bound_the_shards_cannot_store_as_float32_is_a_usage_error(
    tmp_path: Path, command: list[str], bound: str
) -> None:
    out = tmp_path / "out"  # it was written: scale_factor inf or 0 in every shard, and verify said OK
    result = invoke(*[a.format(tmp=tmp_path) for a in command], "--out", str(out), "--bound", bound)
    assert result.exit_code == 2, result.output
    assert (f"Invalid value for '--bound': {float(bound):g} cannot be stored: the shards hold scale_factor "
            "(2*bound/255) and add_offset (-bound) as 32-bit floats, so the bound must be from 1.5e-36 to 3.4e+38"
            in " ".join(result.output.split()))
    assert not out.exists()
