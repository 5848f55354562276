import zlib

import h5py
import numpy as np
import pytest

from flowprep.extract.quantize import quantize
from flowprep.extract.writer import VideoMeta, VideoWriter

META = VideoMeta(video_id="A/v_A_g01_c01", source="A/v_A_g01_c01.avi", label=0, class_name="A")


def _field(seed: int) -> np.ndarray:
    y, x = np.mgrid[0:24, 0:32].astype(np.float32)
    rng = np.random.default_rng(seed)
    return quantize(np.stack([np.sin(x / 5 + seed) * 6, np.cos(y / 4) * 3]) + rng.normal(0, 0.3, (2, 24, 32)), 20.0)


@pytest.mark.parametrize("level", [0, 1, 3])
def test_isal_chunks_are_standard_gzip_filter_chunks(tmp_path, level: int) -> None:
    q = np.stack([_field(s) for s in range(5)])
    path = tmp_path / "v.h5"
    with h5py.File(path, "w") as f:
        w = VideoWriter(f, META, height=24, width=32, bound=20.0, rgb=False, compression_level=level)
        w.append_flow(q[:2])
        w.append_flow(q[2:])
        w.finish(num_frames=6, fps=25.0)
    with h5py.File(path, "r") as f:
        ds = f["videos/A/v_A_g01_c01/flow"]
        assert ds.compression == "gzip" and ds.chunks == (1, 2, 24, 32)
        np.testing.assert_array_equal(ds[:], q)  # HDF5's own gzip filter inflates them
        _, raw = ds.id.read_direct_chunk((3, 0, 0, 0))
        assert zlib.decompress(raw) == q[3].tobytes()  # a plain zlib stream


def test_gzip_level_outside_isal_range_is_refused(tmp_path) -> None:
    with h5py.File(tmp_path / "v.h5", "w") as f, pytest.raises(ValueError, match="0-3"):
        VideoWriter(f, META, height=24, width=32, bound=20.0, compression_level=6)


def test_uncompressed_and_shape_check(tmp_path) -> None:
    with h5py.File(tmp_path / "v.h5", "w") as f:
        w = VideoWriter(f, META, height=24, width=32, bound=20.0, rgb=False, compression=None, compression_level=None)
        w.append_flow(np.stack([_field(0)]))
        with pytest.raises(ValueError, match=r"expected uint8 flow of shape \(n, 2, 24, 32\)"):
            w.append_flow(np.zeros((1, 2, 24, 31), np.uint8))
        w.finish(num_frames=2, fps=25.0)
        assert f["videos/A/v_A_g01_c01/flow"].compression is None
