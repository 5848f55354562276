import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import av
import cv2
import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from flowprep.cli import main
from flowprep.tools import preview
from flowprep.tools.preview import load_video, render_grid, write_preview
from flowprep.extract.quantize import quantize
from flowprep.extract.writer import VideoMeta, VideoWriter, write_file_attrs
from processes import bound_by_file_modes

H, W, T = 40, 56, 6  # tiny frames: the preview magnifies them 4x


def write_shards(root: Path, videos: dict[str, tuple[np.ndarray, np.ndarray | None]], *, bound: float = 20.0) -> None:
    """A shard folder per docs/shard-format.md: one shard + manifest.json. videos: id -> (flow (T-1,2,H,W), rgb)."""
    root.mkdir(parents=True, exist_ok=True)
    with h5py.File(root / "shard-00000.h5", "w") as f:
        write_file_attrs(f, {"flow": {"method": "farneback", "bound": bound}})
        for vid, (flow, rgb) in videos.items():
            cls = vid.split("/")[0]
            meta = VideoMeta(video_id=vid, source=vid + ".avi", label=0, class_name=cls)
            with VideoWriter(f, meta, height=H, width=W, bound=bound, rgb=rgb is not None) as w:
                w.append_flow(quantize(flow, bound))
                if rgb is not None:  # JPEG of an RGB picture: OpenCV encodes BGR-ordered arrays
                    w.append_rgb([cv2.imencode(".jpg", im[..., ::-1])[1].tobytes() for im in rgb])
                w.finish(num_frames=len(flow) + 1, fps=25.0)
    manifest = {
        "format": "flowprep-manifest",
        "format_version": 1,
        "complete": True,
        "task": {"index": 0, "count": 1},
        "classes": sorted({v.split("/")[0] for v in videos}),
        "num_videos": len(videos),
        "shards": [{"name": "shard-00000.h5", "size": 0, "sha256": "", "videos": list(videos)}],
        "failures": [],
    }
    (root / "manifest.json").write_text(json.dumps(manifest))


def constant_flow(u: float, v: float) -> np.ndarray:
    flow = np.zeros((T - 1, 2, H, W), np.float32)
    flow[:, 0], flow[:, 1] = u, v
    return flow


def frames() -> np.ndarray:
    rgb = np.zeros((T, H, W, 3), np.uint8)
    rgb[..., 2] = 200  # blue
    rgb[..., 1] = (np.arange(T) * 30)[:, None, None]
    return rgb


@pytest.fixture
def shards(tmp_path: Path) -> Path:
    root = tmp_path / "shards"
    write_shards(
        root,
        {
            "MoveRight/v_MoveRight_g01_c01": (constant_flow(2.0, 0.0), frames()),
            "MoveDown/v_MoveDown_g01_c01": (constant_flow(0.0, 2.0), None),
        },
    )
    return root


def pixels_of_hue(img: np.ndarray, hue: float) -> int:
    """Pixels of the given hue (+-3 deg; quantization tilts a 2 px field by up to 2.3 deg) at >= 95% brightness."""
    hsv = cv2.cvtColor(img.astype(np.float32) / 255, cv2.COLOR_RGB2HSV)
    near = np.abs((hsv[..., 0] - hue + 180) % 360 - 180) <= 3
    return int((near & (hsv[..., 1] > 0.9) & (hsv[..., 2] >= 0.95)).sum())


def red_pixels(img: np.ndarray) -> int:
    return pixels_of_hue(img, 0.0)


def test_load_video_dequantizes_with_the_stored_attributes(tmp_path: Path) -> None:
    root = tmp_path / "b5"
    write_shards(root, {"A/v_A_g01_c01": (constant_flow(-1.3, 0.7), frames())}, bound=5.0)
    video = load_video(root, "A/v_A_g01_c01", frames=3)
    assert video.fields.tolist() == [0, 2, 4] and video.flow.shape == (3, 2, H, W)
    assert video.bound == 5.0
    np.testing.assert_allclose(video.flow[:, 0], -1.3, atol=5.0 / 255 + 1e-6)  # B = 5, not 20
    np.testing.assert_allclose(video.flow[:, 1], 0.7, atol=5.0 / 255 + 1e-6)
    assert video.rgb.shape == (3, H, W, 3)
    # Colours come back in RGB order (blue stays blue), frame i for field i.
    np.testing.assert_allclose(video.rgb[:, H // 2, W // 2], [[0, 0, 200], [0, 60, 200], [0, 120, 200]], atol=6)


def test_png_grid_decodes_with_the_rendered_size_and_right_motion_is_red(shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.png"
    info = write_preview(shards, "MoveRight/v_MoveRight_g01_c01", out, frames=3)
    assert info["fields"] == [0, 2, 4]
    assert info["max_flow"] == 2.0  # 99th percentile of |f| (1.96 after quantization) rounded up to 0.5 px
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape == (info["height"], info["width"], 3)
    # Lossless PNG: the file is exactly the rendered picture.
    assert (img == render_grid(load_video(shards, "MoveRight/v_MoveRight_g01_c01", frames=3), max_flow=2.0)).all()
    # Three flow panels magnified 4x, pure red (hue 0, full brightness), plus a few wheel pixels.
    panel = (H * 4) * (W * 4)
    assert 3 * panel <= red_pixels(img) < 3 * panel + 200
    # The RGB frames are there too (blue-dominant pixels of the JPEG frames).
    blue = (img[..., 2] > 180) & (img[..., 0] < 30)
    assert blue.sum() >= 3 * panel * 0.9


def test_gif_and_mp4_are_animations_of_every_field(shards: Path, tmp_path: Path) -> None:
    info = write_preview(shards, "MoveRight/v_MoveRight_g01_c01", tmp_path / "a.gif")
    with Image.open(tmp_path / "a.gif") as gif:
        assert gif.n_frames == T - 1
        assert gif.size == (info["width"], info["height"])
        gif.seek(T - 2)
        assert red_pixels(np.asarray(gif.convert("RGB"))) >= (H * 4) * (W * 4) * 0.95  # GIF palette: red stays red
    info = write_preview(shards, "MoveRight/v_MoveRight_g01_c01", tmp_path / "a.mp4", frames=4)
    with av.open(str(tmp_path / "a.mp4")) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(decoded) == 4
    assert decoded[0].shape == (info["height"], info["width"], 3)


def test_video_without_rgb_still_previews(shards: Path, tmp_path: Path) -> None:
    info = write_preview(shards, "MoveDown/v_MoveDown_g01_c01", tmp_path / "d.png", max_flow=2.0)
    img = np.asarray(Image.open(tmp_path / "d.png").convert("RGB"))
    assert pixels_of_hue(img, 90.0) >= len(info["fields"]) * (H * 4) * (W * 4)  # down: hue 90


def test_cli_preview_through_the_flowprep_group(shards: Path, tmp_path: Path) -> None:
    # A list-file path (with the extension) names the same video.
    args = ["preview", str(shards), "MoveRight/v_MoveRight_g01_c01.avi", "--out", str(tmp_path / "x.png")]
    args += ["--frames", "2"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "2 frame pairs" in res.output and (tmp_path / "x.png").stat().st_size > 0


def test_a_video_id_that_starts_with_a_dash_previews_as_the_help_says(tmp_path: Path) -> None:
    """Kinetics ids such as -VtLx-mcPds_000012_000022 read as an option where the usage line puts VIDEO_ID."""
    root = tmp_path / "shards"
    write_shards(root, {"-VtLx-mcPds_000012_000022": (constant_flow(2.0, 0.0), frames())})
    out = tmp_path / "x.png"
    as_usage = CliRunner().invoke(main, ["preview", str(root), "-VtLx-mcPds_000012_000022", "--out", str(out)])
    assert as_usage.exit_code == 2 and "No such option" in as_usage.output
    help_text = CliRunner().invoke(main, ["preview", "--help"]).output
    (advice,) = [line for line in help_text.splitlines() if "starts with '-'" in line]
    args = advice.split(": ... ", 1)[1].split()
    res = CliRunner().invoke(main, ["preview", str(root), *[str(out) if a == "x.png" else a for a in args]])
    assert res.exit_code == 0, res.output
    assert out.stat().st_size > 0


def test_bad_input_is_one_clear_line(shards: Path, tmp_path: Path) -> None:
    # A real process once: exit status 1 and one line on stderr, no traceback.
    res = subprocess.run(
        [sys.executable, "-m", "flowprep", "preview", str(tmp_path / "nope"), "A/v_A", "--out", f"{tmp_path}/x.png"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip().count("\n") == 0 and "no such folder" in res.stderr

    def preview(*args: str) -> str:
        res = CliRunner().invoke(main, ["preview", *args])
        assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
        assert res.output.startswith("Error: ") and res.output.strip().count("\n") == 0
        return res.output

    out = str(tmp_path / "x.png")
    msg = preview(str(shards), "MoveRight/v_MoveRight_g1_c01", "--out", out)
    assert "unknown video id" in msg and "did you mean MoveRight/v_MoveRight_g01_c01" in msg
    assert "expected manifest.json or manifest-*-of-*.json" in preview(str(tmp_path), "A/v_A", "--out", out)
    (shards / "shard-00000.h5").rename(shards / "moved.h5")
    msg = preview(str(shards), "MoveRight/v_MoveRight_g01_c01", "--out", out)
    assert "the manifest lists MoveRight/v_MoveRight_g01_c01 in shard-00000.h5, but" in msg
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("name, says", [
    ("x.jpg", "expected --out ending in .png, .gif, .mp4, got x.jpg"),
    ("x", "expected --out ending in .png, .gif, .mp4, got x"),
    ("no/x.png", "expected an existing folder for --out, got {tmp}/no: no such folder"),
])
def test_an_out_preview_cannot_write_is_a_usage_error_of_one_line_before_any_shard_is_read(
    shards: Path, tmp_path: Path, name: str, says: str
) -> None:
    # exit 1 ("bad input") once: an option value the command cannot use is a usage error, as for every command
    for root in (shards, tmp_path / "no-shards-here"):  # checked first: the shard folder's own error does not win
        res = CliRunner().invoke(main, ["preview", str(root), "MoveRight/v_MoveRight_g01_c01", "--out",
                                        str(tmp_path / name)])
        assert res.exit_code == 2 and isinstance(res.exception, SystemExit), res.output
        assert res.output == f"Error: {says.format(tmp=tmp_path)}\n"
    assert not (tmp_path / "no").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["shards"]


def test_an_out_in_a_folder_without_write_permission_is_a_usage_error_of_one_line(shards: Path, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    cmd = [sys.executable, "-m", "flowprep", "preview", str(shards), "MoveRight/v_MoveRight_g01_c01", "--out",
           str(locked / "x.gif")]
    cmd = bound_by_file_modes(cmd)  # root: as one without the capabilities that bypass modes
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr  # was 75 after rendering: "rerun the same command", forever
    assert res.stderr.strip() == f"Error: cannot write into {locked}: permission denied ({locked / 'x.gif'})"
    assert list(locked.iterdir()) == []


def test_an_out_that_is_a_folder_is_a_usage_error(shards: Path, tmp_path: Path) -> None:
    (tmp_path / "d.png").mkdir()
    res = CliRunner().invoke(main, ["preview", str(shards), "MoveRight/v_MoveRight_g01_c01", "--out",
                                    str(tmp_path / "d.png")])
    assert res.exit_code == 2 and "Invalid value for '--out'" in res.output and "is a directory" in res.output


def test_a_damaged_flow_chunk_or_jpeg_frame_is_one_line_naming_the_shard_and_the_video(shards: Path, tmp_path: Path) -> None:
    shard, vid = shards / "shard-00000.h5", "MoveRight/v_MoveRight_g01_c01"
    with h5py.File(shard, "r") as f:
        chunk = f[f"videos/{vid}/flow"].id.get_chunk_info(1)
        jpeg = f[f"videos/{vid}/rgb"][0].tobytes()
    good = shard.read_bytes()
    start = good.index(jpeg[-64:]) + 64 - len(jpeg)  # the frame's end is unique; its header is not
    for offset, what in ((chunk.byte_offset + 4, f"{shard}: the flow of {vid} cannot be read ("),
                         (start, f"{shard}: rgb[0] of {vid} is not a {W}x{H} JPEG; the shard is damaged")):
        data = bytearray(good)
        data[offset:offset + 8] = b"\xff" * 8  # below HDF5, as a disk damages a file
        shard.write_bytes(bytes(data))
        res = CliRunner().invoke(main, ["preview", str(shards), vid, "--out", str(tmp_path / "x.png")])
        assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
        assert res.output.startswith(f"Error: {what}") and res.output.strip().count("\n") == 0, res.output
        assert res.output.strip().endswith(f"(flowprep verify {shards} names it, a rerun of flowprep extract with "
                                           "--check repairs it)")
        assert not (tmp_path / "x.png").exists()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="mounting a tmpfs needs root")
def test_a_full_disk_is_one_line_exit_75_and_leaves_no_picture_cut_short(shards: Path, tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], check=True)
    try:
        (disk / "fill").write_bytes(b"\0" * (60 << 10))  # a few kB left: each picture starts, none fits
        for name in ("x.gif", "x.mp4", "x.png"):
            res = CliRunner().invoke(main, ["preview", str(shards), "MoveRight/v_MoveRight_g01_c01", "--out",
                                            str(disk / name)])
            assert res.exit_code == 75 and isinstance(res.exception, SystemExit), (name, res.output)
            assert res.output.startswith(f"Error: disk full ({disk}): ") and res.output.strip().count("\n") == 0
            assert not (disk / name).exists()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_shard_with_damaged_hdf5_metadata_is_one_line_never_a_traceback(shards: Path, tmp_path: Path) -> None:
    # a byte flipped in an object header or heap: h5py raised KeyError, which came out as a traceback
    (shard,) = [p for p in shards.glob("*.h5")]
    data = shard.read_bytes()
    codes = set()
    for position in range(0, 4096, 61):
        damaged = bytearray(data)
        damaged[position] ^= 0xFF
        shard.write_bytes(bytes(damaged))
        res = CliRunner().invoke(main, ["preview", str(shards), "MoveRight/v_MoveRight_g01_c01", "--out",
                                        str(tmp_path / "x.png")])
        assert res.exit_code in (0, 1) and not isinstance(res.exception, Exception), (position, res.output)
        assert res.output.strip().count("\n") == 0 and "Traceback" not in res.output, (position, res.output)
        codes.add(res.exit_code)
        if res.exit_code == 1:
            assert res.output.startswith("Error: ") and str(shard) in res.output, res.output
    assert codes == {0, 1}  # some bytes are not read by a preview; many are


def test_a_failed_preview_leaves_an_earlier_picture_and_a_link_as_they_were_and_a_killed_one_no_picture_cut_short(
    shards: Path, tmp_path: Path
) -> None:
    """preview wrote --out in place and removed it on any failure: a full disk while replacing an earlier picture
    deleted that picture, a failure into a dangling link deleted the link (exit 75 where the link's folder does not
    exist, a usage error), and a preview killed while writing left a picture cut short under the final name."""
    import signal

    vid, out = "MoveRight/v_MoveRight_g01_c01", tmp_path / "x.mp4"
    assert CliRunner().invoke(main, ["preview", str(shards), vid, "--out", str(out)]).exit_code == 0
    earlier = out.read_bytes()
    code = ("import os, signal, sys; from flowprep.tools import preview as m; real = m.write_mp4\n"
            "def write(images, path, **k):\n"
            "    real(images[:1], path, **k)\n"  # a picture of one frame, written, then the process is killed
            "    os.kill(os.getpid(), signal.SIGKILL)\n"
            "m.write_mp4 = write\n"
            "from flowprep.cli import main; main(sys.argv[1:])")
    for target in (out, tmp_path / "new.mp4"):
        killed = subprocess.run([sys.executable, "-c", code, "preview", str(shards), vid, "--out", str(target)],
                                capture_output=True, text=True, timeout=120)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert out.read_bytes() == earlier and not (tmp_path / "new.mp4").exists()
    for leftover in tmp_path.glob(".*.tmp-*"):  # a killed run's temporary: hidden, never the picture's name
        leftover.unlink()

    def full(images, path, **kw):
        Path(path).write_bytes(b"\0" * 100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(preview, "write_mp4", full)
        res = CliRunner().invoke(main, ["preview", str(shards), vid, "--out", str(out)])
    assert res.exit_code == 75 and res.output.startswith(f"Error: disk full ({tmp_path}): "), res.output
    assert out.read_bytes() == earlier
    dangling = tmp_path / "link.png"
    dangling.symlink_to(tmp_path / "nowhere" / "x.png")
    res = CliRunner().invoke(main, ["preview", str(shards), vid, "--out", str(dangling)])
    assert res.exit_code == 2 and res.output == f"Error: expected an existing folder for --out, got {tmp_path / 'nowhere'}: no such folder\n"
    assert dangling.is_symlink()
    (tmp_path / "pictures").mkdir()
    link = tmp_path / "link.gif"
    link.symlink_to(tmp_path / "pictures" / "x.gif")
    assert CliRunner().invoke(main, ["preview", str(shards), vid, "--out", str(link)]).exit_code == 0
    assert link.is_symlink() and (tmp_path / "pictures" / "x.gif").read_bytes()[:6] == b"GIF89a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.gif", "link.png", "pictures", "shards", "x.mp4"]


def test_a_shard_this_user_may_not_read_is_said_so_not_called_damaged(shards: Path, tmp_path: Path) -> None:
    """It said 'the shard is damaged (... a rerun of flowprep extract with --check repairs it)': the wrong fix."""
    shard = shards / "shard-00000.h5"
    shard.chmod(0)
    cmd = [sys.executable, "-m", "flowprep", "preview", str(shards), "MoveRight/v_MoveRight_g01_c01", "--out",
           str(tmp_path / "x.png")]
    cmd = bound_by_file_modes(cmd)  # root: as one without the capabilities that bypass modes
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stderr
    assert res.stderr.strip() == f"Error: cannot read {shard}: permission denied (fix its permissions)"
    assert not (tmp_path / "x.png").exists()
