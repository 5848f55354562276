import cv2
import numpy as np
import pytest

from flowprep.tools.sample import plan_clips
from flowprep.tools.synth import DEFAULT_CLASSES, MIRROR_SAFE_CLASSES, MOTIONS, ClipSpec, draw_scene, render_clip


def test_raw_frames_are_a_function_of_the_seed() -> None:
    spec = ClipSpec("RotateClockwise", 0, 2, 1, 64, 48, 8, seed=11)
    a = render_clip(spec)
    assert a.shape == (8, 48, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, render_clip(spec))
    for other in (
        ClipSpec("RotateClockwise", 0, 2, 1, 64, 48, 8, seed=12),
        ClipSpec("RotateClockwise", 0, 2, 2, 64, 48, 8, seed=11),
    ):
        assert np.abs(render_clip(other).astype(int) - a).mean() > 10
    assert (np.abs(np.diff(a.astype(int), axis=0)).mean(axis=(1, 2, 3)) > 1).all()  # it moves, every frame


def test_clips_of_a_group_share_the_appearance_parameters() -> None:
    a, b = (draw_scene(ClipSpec("Expand", 0, 3, c, 64, 64, 8)) for c in (1, 2))
    other = draw_scene(ClipSpec("Expand", 0, 4, 1, 64, 64, 8))
    assert np.array_equal(a.fg_palette, b.fg_palette) and a.background_seed == b.background_seed
    assert np.linalg.norm(np.subtract(a.window_center, b.window_center)) < 12
    assert a.texture_seed != b.texture_seed and not np.array_equal(a.fg_palette, other.fg_palette)


def frame_features(frame: np.ndarray) -> np.ndarray:
    """What one frame shows: colour statistics, edge density and where the colour and the edges are."""
    f = frame.astype(np.float32)
    g = f.mean(axis=2)
    edges = np.hypot(cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1))
    yy, xx = np.mgrid[0 : g.shape[0], 0 : g.shape[1]]
    return np.r_[
        f.mean(axis=(0, 1)),
        f.std(axis=(0, 1)),
        edges.mean(),
        (edges < 2).mean(),  # flat area: big discs would show here if zooming changed the texture scale
        cv2.Laplacian(g, cv2.CV_32F).var(),
        (edges * xx).sum() / edges.sum(),
        (edges * yy).sum() / edges.sum(),
        (g * xx).sum() / g.sum(),
        (g * yy).sum() / g.sum(),
    ]


def motion_features(frames: np.ndarray, spec: ClipSpec) -> np.ndarray:
    """Mean Farneback flow in the window: (u, v, tangential (+ clockwise), radial (+ outward))."""
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    fields = [cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0) for a, b in zip(gray, gray[1:])]
    flow = np.mean(fields, axis=0)
    sc = draw_scene(spec)
    yy, xx = np.mgrid[0 : spec.height, 0 : spec.width].astype(np.float32)
    dx, dy = xx - sc.motion_center[0], yy - sc.motion_center[1]
    r = np.hypot(dx, dy) + 1e-6
    (cx, cy), (ax, ay) = sc.window_center, sc.window_axes
    inside = np.hypot((xx - cx) / ax, (yy - cy) / ay) < 0.7  # well inside the window (any angle)
    u, v = flow[..., 0], flow[..., 1]
    tangential, radial = (dx * v - dy * u) / r, (dx * u + dy * v) / r
    return np.array([u[inside].mean(), v[inside].mean(), tangential[inside].mean(), radial[inside].mean()])


def nearest_centroid_accuracy(x: np.ndarray, y: np.ndarray, groups: np.ndarray, k: int) -> float:
    """Leave-one-group-out: what a classifier trained on other groups gets on new groups."""
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-9)
    hits = []
    for g in np.unique(groups):
        train, test = groups != g, groups == g
        centroids = np.stack([x[train & (y == c)].mean(axis=0) for c in range(k)])
        hits.extend(np.argmin(((x[test][:, None] - centroids[None]) ** 2).sum(-1), axis=1) == y[test])
    return float(np.mean(hits))


@pytest.mark.slow
def test_single_frames_do_not_tell_the_class_but_the_motion_does() -> None:
    specs = plan_clips(
        classes=DEFAULT_CLASSES, videos_per_class=6, clips_per_group=1, width=64, height=64, frames=16, seed=5
    )
    k, appearance, motion, labels, groups = len(DEFAULT_CLASSES), [], [], [], []
    for spec in specs:
        frames = render_clip(spec)
        for t in (0, 8, 15):  # first, middle and last frames
            appearance.append(frame_features(frames[t]))
            labels.append(spec.label)
            groups.append(spec.group)
        motion.append(motion_features(frames, spec))
    y, g = np.array(labels), np.array(groups)
    chance = 1 / k
    # Appearance: a classifier on single-frame statistics stays near chance on unseen groups
    # (48 clips: one standard error of a chance-level accuracy is ~0.05).
    assert nearest_centroid_accuracy(np.array(appearance), y, g, k) < chance + 0.15
    # Motion: each class's mean flow points its own way.
    m, ym = np.array(motion), y[::3]
    # (u, v, tangential, radial) of each class, in DEFAULT_CLASSES order
    templates = np.array([[-1, 0, 0, 0], [1, 0, 0, 0], [0, -1, 0, 0], [0, 1, 0, 0]] + [[0, 0, 1, 0], [0, 0, -1, 0]]
                         + [[0, 0, 0, 1], [0, 0, 0, -1]])
    assert [DEFAULT_CLASSES[i] for i in range(k)] == [
        "MoveLeft", "MoveRight", "MoveUp", "MoveDown", "RotateClockwise", "RotateCounterclockwise", "Expand", "Contract"
    ]
    assert np.mean(np.argmax(m @ templates.T, axis=1) == ym) >= 0.95
    for c in range(k):  # every clip moves along its class template
        mean = m[ym == c] @ templates[c]
        assert mean.min() > 0, DEFAULT_CLASSES[c]
    # The same statistics do tell the motion apart: the appearance check is not blind.
    assert nearest_centroid_accuracy(m, ym, g[::3], k) > 0.8


def test_mirror_safe_classes_are_their_own_mirror_image() -> None:
    # A horizontal flip maps a translation (x, y) to (-x, y) and a rotation to the opposite sense
    # (x = -sense); a zoom stays itself.
    def mirrored(kind: str, x: float, y: float) -> tuple[str, float, float]:
        return (kind, x, y) if kind == "zoom" else (kind, -x, y)

    safe = [name for name, m in MOTIONS.items() if mirrored(*m) == m]
    assert tuple(safe) == MIRROR_SAFE_CLASSES
    by_motion = {m: name for name, m in MOTIONS.items()}
    assert by_motion[mirrored(*MOTIONS["MoveLeft"])] == "MoveRight"
    assert by_motion[mirrored(*MOTIONS["RotateClockwise"])] == "RotateCounterclockwise"
