"""trainer/evaluate.py: metrics, fusion fitted on validation only, results/scores/PNG files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer import checkpoint as ck
from trainer.config import DataConfig, ModelConfig, to_dict
from trainer.data.errors import DataError
from trainer.evaluate import (
    ALPHA_CRITERION, confusion_matrix, fit_learned_fusion, fused_log_likelihood, load_scores, plot_confusion, report,
    run_evaluate, score_metrics, search_alpha, topk_accuracy,
)
from trainer.models.build import build_model

CPU = torch.device("cpu")


def test_topk_and_mean_class_accuracy() -> None:
    scores = np.array([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3]])
    labels = np.array([0, 1, 2, 0])
    assert topk_accuracy(scores, labels, 1) == 0.5
    assert topk_accuracy(scores, labels, 2) == 0.75  # video 1: class 1 is second (hit); video 3: class 0 is third
    assert topk_accuracy(scores, labels, 5) == 1.0  # k capped at 3 classes
    assert confusion_matrix(scores.argmax(1), labels, 3).tolist() == [[1, 1, 0], [1, 0, 0], [0, 0, 1]]
    m = score_metrics(scores, labels)
    # class 0: 1 of 2 right, class 1: 0 of 1, class 2: 1 of 1 -> mean of (0.5, 0, 1)
    assert m == {"top1": 0.5, "top5": 1.0, "mean_class": pytest.approx(0.5)}


def _two_stream_val(n: int = 60, k: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spatial is right (unsure, 0.5) on classes 0 and 1 and confidently wrong (0.95) on class 2; temporal
    the other way round. A fixed weight cannot fix both: classes 0/1 need alpha > 0.655, class 2 alpha < 0.345."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    s, t = np.full((n, k), 0.025), np.full((n, k), 0.025)
    for i, y in enumerate(labels):
        wrong = (y + 1) % k
        if y < 2:
            s[i, y], t[i, wrong] = 0.5, 0.95
        else:
            s[i, wrong], t[i, y] = 0.95, 0.5
    return s / s.sum(1, keepdims=True), t / t.sum(1, keepdims=True), labels


def _stream(labels: np.ndarray, k: int, *, boost: float, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Softmax scores of logits ~ N(0, noise), the true class's raised by ``boost``: a larger noise makes a stream
    confidently wrong on some videos, where another stream can help."""
    logits = rng.normal(0.0, noise, (len(labels), k))
    logits[np.arange(len(labels)), labels] += boost
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True)


def _check_optimum(alpha: float, s: np.ndarray, t: np.ndarray, y: np.ndarray) -> None:
    """alpha is the best weight on a fine grid, and never worse than either stream alone."""
    ll = fused_log_likelihood(alpha, s, t, y)
    assert ll >= max(fused_log_likelihood(a, s, t, y) for a in np.linspace(0, 1, 1001)) - 1e-9
    assert ll >= fused_log_likelihood(0.0, s, t, y) and ll >= fused_log_likelihood(1.0, s, t, y)


@pytest.mark.parametrize("seed", range(5))
def test_search_alpha_gives_an_uninformative_stream_no_weight(seed: int) -> None:
    # 16 validation videos, 8 classes, as in the demo: the spatial stream is at chance (its confident guesses
    # ignore the label), the temporal one mostly right. Top-1 ties for many weights here; the likelihood does not.
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 8, 16)
    chance = np.eye(8)[rng.integers(0, 8, 16)] * 0.9 + 0.1 / 8  # confidently wrong 7 times in 8
    t = _stream(y, 8, boost=4.0, noise=1.0, rng=rng)  # right on ~95% of videos, calibrated
    alpha = search_alpha(chance, t, y)
    assert alpha < 0.05, alpha
    _check_optimum(alpha, chance, t, y)
    assert search_alpha(t, chance, y) > 0.95  # the same with the streams swapped
    uniform = np.full((16, 8), 1 / 8)  # a stream that knows nothing and says so
    assert search_alpha(uniform, t, y) < 0.05


def test_search_alpha_weighs_two_informative_streams_in_between() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 8, 200)
    # Each stream right on 40% / 60% of the videos and confidently wrong on others, independently.
    s, t = _stream(y, 8, boost=3.0, noise=3.0, rng=rng), _stream(y, 8, boost=5.0, noise=3.0, rng=rng)
    alpha = search_alpha(s, t, y)
    assert 0.1 < alpha < 0.5, alpha  # both count; the better (temporal) one more
    assert topk_accuracy(alpha * s + (1 - alpha) * t, y, 1) > topk_accuracy(t, y, 1)
    _check_optimum(alpha, s, t, y)
    assert fused_log_likelihood(alpha, s, t, y) > max(fused_log_likelihood(a, s, t, y) for a in (0.0, 1.0))
    # The specialised streams of _two_stream_val: each is right where the other is wrong, so both count.
    s2, t2, y2 = _two_stream_val()
    alpha2 = search_alpha(s2, t2, y2)
    assert 0.0 < alpha2 < 1.0
    _check_optimum(alpha2, s2, t2, y2)


def test_search_alpha_edge_cases() -> None:
    y = np.array([0, 1, 2])
    right, wrong = np.eye(3)[y], np.eye(3)[(y + 1) % 3]
    assert search_alpha(right, wrong, y) == 1.0 and search_alpha(wrong, right, y) == 0.0  # one stream is never wrong
    assert search_alpha(right, right, y) == 0.5  # the streams agree on every video: no reason to prefer one
    with pytest.raises(ValueError, match="at least one"):
        search_alpha(right[:0], right[:0], y[:0])


def test_learned_fusion_beats_averaging_where_streams_specialise() -> None:
    s, t, y = _two_stream_val()
    mlp = fit_learned_fusion(s, t, y)
    with torch.no_grad():
        logp = lambda p: torch.from_numpy(np.log(p)).float()  # noqa: E731
        pred = mlp(logp(s), logp(t)).argmax(1).numpy()
    assert (pred == y).mean() == 1.0
    assert max(topk_accuracy(a * s + (1 - a) * t, y, 1) for a in np.linspace(0, 1, 101)) < 0.9


def test_confusion_png(tmp_path: Path) -> None:
    cm = np.array([[3, 1], [0, 4]])
    path = plot_confusion(cm, ["Drift", "Expand"], tmp_path / "cm.png", title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000


def test_a_confusion_png_that_fails_half_way_leaves_the_earlier_picture_whole(tmp_path: Path, monkeypatch) -> None:
    """The confusion matrices were saved in place: evaluate or fuse killed or failing (a full disk) while writing one
    left a PNG cut short beside the results."""
    import errno

    from matplotlib.figure import Figure

    cm = np.array([[3, 1], [0, 4]])
    path = plot_confusion(cm, ["Drift", "Expand"], tmp_path / "cm.png", title="t")
    earlier = path.read_bytes()

    def savefig_on_a_full_disk(self, fname, **kw):
        Path(fname).write_bytes(earlier[:100])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", savefig_on_a_full_disk)
    with pytest.raises(OSError, match="No space left"):
        plot_confusion(cm[::-1], ["Drift", "Expand"], path, title="t")
    assert path.read_bytes() == earlier and [p.name for p in tmp_path.iterdir()] == ["cm.png"]


def _save_run(run: Path, stream: str, classes: list[str], *, seed: int) -> Path:
    """A checkpoint as fit writes it (untrained resnet18 weights; the scores are checked, not the accuracy)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(stream=stream, num_classes=len(classes), arch="resnet18", flow_length=2, dropout=0.5)
    data = DataConfig(shards="unused", train_list="unused", crop_size=16)
    state = {"model": build_model(cfg, pretrained=None).state_dict(), "epoch": 1,
             "config": {"model": to_dict(cfg), "data": to_dict(data)}, "classes": classes}
    return ck.save_checkpoint(state, run / ck.BEST)


@pytest.fixture(scope="module")
def runs(tiny_shards, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {s: _save_run(root / s, s, tiny_shards.classes, seed=i).parent for i, s in enumerate(("spatial", "temporal"))}


def test_evaluate_both_streams_with_fusion_fitted_on_validation(tiny_shards, runs, tmp_path) -> None:
    out = tmp_path / "results.json"
    res = run_evaluate(shards=str(tiny_shards.root), test_list=str(tiny_shards.test_list), spatial=str(runs["spatial"]),
                       temporal=str(runs["temporal"]), fusion="weighted", spatial_weight="auto",
                       val_list=str(tiny_shards.val_list), samples=1, crops=10, device=CPU, out=out, workers=0,
                       show_progress=False)
    assert json.loads(out.read_text()) == res
    assert res["num_videos"] == 3 and res["fusion"] == "weighted" and res["fusion_fitted_on"] == 3
    bundle = load_scores(out.with_name("results.scores.npz"))
    assert bundle["video_ids"].tolist() == [v for v in tiny_shards.video_ids if v.endswith("g04_c01")]
    assert bundle["labels"].tolist() == [0, 1, 2]
    assert bundle["val_labels"].tolist() == [0, 1, 2]
    # alpha was picked on the validation scores, and the fused test scores use it
    val = bundle["val_spatial"], bundle["val_temporal"], bundle["val_labels"]
    assert res["alpha"] == search_alpha(*val)
    crit = res["alpha_criterion"]
    assert crit["name"] == ALPHA_CRITERION and crit["value"] == fused_log_likelihood(res["alpha"], *val)
    assert crit["temporal_only"] == fused_log_likelihood(0.0, *val) and crit["spatial_only"] == fused_log_likelihood(1.0, *val)
    assert crit["value"] >= max(crit["temporal_only"], crit["spatial_only"])
    fused = res["alpha"] * bundle["spatial"] + (1 - res["alpha"]) * bundle["temporal"]
    for name, sc in (("spatial", bundle["spatial"]), ("temporal", bundle["temporal"]), ("fused", fused)):
        assert res[name] == score_metrics(sc, bundle["labels"])
        assert sc.shape == (3, 3) and sc.sum(1) == pytest.approx(1.0)
        assert Path(res["confusion"][name]).read_bytes()[:4] == b"\x89PNG"
    assert res["checkpoints"] == {s: str(runs[s] / ck.BEST) for s in ("spatial", "temporal")}

    # The fusion can be redone from the saved scores without the networks.
    again = report(bundle, fusion="average", spatial_weight=None, out=tmp_path / "avg.json")
    assert again["alpha"] == 0.5 and again["spatial"] == res["spatial"] and "alpha_criterion" not in again
    assert again["fused"] == score_metrics(0.5 * bundle["spatial"] + 0.5 * bundle["temporal"], bundle["labels"])
    learned = report(bundle, fusion="learned", spatial_weight=None, out=tmp_path / "learned.json")
    assert learned["fusion_fitted_on"] == 3 and learned["alpha"] is None and set(learned["fused"]) == {"top1", "top5", "mean_class"}


def test_evaluate_one_stream_single_crop_leaves_no_picture_of_another_stream(tiny_shards, runs, tmp_path) -> None:
    out = tmp_path / "sub" / "t.json"
    out.parent.mkdir()
    for name in ("spatial", "fused"):  # an earlier evaluation of both streams into the same --out drew these
        (out.parent / f"t.confusion-{name}.png").write_bytes(b"\x89PNG earlier")
    res = run_evaluate(shards=str(tiny_shards.root), test_list=str(tiny_shards.test_list), spatial=None,
                       temporal=str(runs["temporal"]), samples=3, crops=1, device=CPU, out=out, workers=0,
                       show_progress=False)
    assert {"temporal", "num_videos"} <= res.keys() and "spatial" not in res and "fused" not in res
    assert res["fusion"] is None and res["samples"] == 3 and res["crops"] == 1
    assert sorted(p.name for p in out.parent.iterdir()) == ["t.confusion-temporal.png", "t.json", "t.scores.npz"]


def test_more_samples_than_any_video_has_score_every_distinct_frame_and_stack_once_and_say_so(
        tiny_shards, runs, tmp_path, capsys) -> None:
    kw = dict(shards=str(tiny_shards.root), test_list=str(tiny_shards.test_list), crops=1, device=CPU, workers=0,
              show_progress=False)
    res = run_evaluate(spatial=str(runs["spatial"]), temporal=str(runs["temporal"]), samples=1000,
                       out=tmp_path / "huge.json", **kw)
    assert res["samples"] == 1000 and res["samples_scored"] == {"spatial": 12, "temporal": 10}  # results.json says so
    assert json.loads((tmp_path / "huge.json").read_text())["samples_scored"] == {"spatial": 12, "temporal": 10}
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "--samples 1000: the test (spatial stream) videos have at most 12 distinct frames; scoring 12 per video",
        "--samples 1000: the test (temporal stream) videos have at most 10 distinct flow stacks of 2 fields; "
        "scoring 10 per video"]
    run_evaluate(spatial=str(runs["spatial"]), temporal=None, samples=12, out=tmp_path / "spatial.json", **kw)
    run_evaluate(spatial=None, temporal=str(runs["temporal"]), samples=10, out=tmp_path / "temporal.json", **kw)
    assert capsys.readouterr().err == ""  # 12 frames, 10 stacks of L = 2: nothing to cap
    huge = load_scores(tmp_path / "huge.scores.npz")
    assert np.array_equal(huge["spatial"], load_scores(tmp_path / "spatial.scores.npz")["spatial"])
    assert np.array_equal(huge["temporal"], load_scores(tmp_path / "temporal.scores.npz")["temporal"])


def test_test_and_validation_videos_shorter_than_a_flow_stack_are_counted_in_one_line_each(make_tiny_shards, runs,
                                                                                            tmp_path, capsys) -> None:
    shards = make_tiny_shards(num_frames=[12, 12, 2, 2, 12, 12, 12, 12, 12, 12, 12, 2])  # g03 val, g04 test; L = 2
    run_evaluate(shards=str(shards.root), test_list=str(shards.test_list), spatial=str(runs["spatial"]),
                 temporal=str(runs["temporal"]), fusion="learned", val_list=str(shards.val_list), samples=2, crops=1,
                 device=CPU, out=tmp_path / "r.json", workers=0, show_progress=False)
    assert capsys.readouterr().err.splitlines() == [
        "2 of 3 test videos have fewer than 3 frames: their stacks repeat the last flow field",
        "1 of 3 validation videos has fewer than 3 frames: their stacks repeat the last flow field"]


def test_evaluation_dequantizes_with_the_shards_factors_not_the_checkpoints(make_tiny_shards, runs, tmp_path):
    """A network's flow input is in pixels / FLOW_NORM_PX whatever the bound: a model trained on bound-12 shards
    scores bound-20 shards, dequantized with their own factors; the factors older checkpoints kept change nothing."""
    shards = make_tiny_shards(bound=20.0)
    old = ck.load_checkpoint(runs["temporal"] / ck.BEST)
    # As fit wrote them before they were dropped: the training shards' (bound 12) factors.
    ck.save_checkpoint({**old, "scale_factor": 2 * 12.0 / 255, "add_offset": -12.0}, tmp_path / "old" / ck.BEST)
    kw = dict(shards=str(shards.root), test_list=str(shards.test_list), spatial=None, samples=2, crops=1, device=CPU,
              workers=0, show_progress=False)
    run_evaluate(temporal=str(runs["temporal"]), out=tmp_path / "new.json", **kw)
    run_evaluate(temporal=str(tmp_path / "old"), out=tmp_path / "old.json", **kw)
    new, older = load_scores(tmp_path / "new.scores.npz"), load_scores(tmp_path / "old.scores.npz")
    assert np.array_equal(new["temporal"], older["temporal"])


def test_evaluate_refuses_test_videos_for_fusion_fitting(tiny_shards, runs, tmp_path) -> None:
    with pytest.raises(DataError, match="shares 3 videos with --test-list"):
        run_evaluate(shards=str(tiny_shards.root), test_list=str(tiny_shards.test_list), spatial=str(runs["spatial"]),
                     temporal=str(runs["temporal"]), fusion="learned", val_list=str(tiny_shards.test_list),
                     device=CPU, out=tmp_path / "r.json", workers=0, show_progress=False)


def test_evaluate_refuses_a_test_list_holding_videos_the_checkpoint_was_trained_or_chosen_on(tiny_shards, runs,
                                                                                            tmp_path) -> None:
    old = ck.load_checkpoint(runs["temporal"] / ck.BEST)
    train = [line.split()[0].rsplit(".", 1)[0] for line in tiny_shards.train_list.read_text().splitlines()]
    val = [line.split()[0].rsplit(".", 1)[0] for line in tiny_shards.val_list.read_text().splitlines()]
    file = ck.save_checkpoint({**old, "videos": {"train": sorted(train), "val": sorted(val)}}, tmp_path / "run" / ck.BEST)
    kw = dict(shards=str(tiny_shards.root), spatial=None, temporal=str(file.parent), device=CPU, samples=1,
              out=tmp_path / "r.json", workers=0, show_progress=False)
    with pytest.raises(DataError) as e:
        run_evaluate(test_list=str(tiny_shards.train_list), **kw)
    assert str(e.value) == (f"--test-list shares 6 videos with those {file} was trained on (e.g. {min(train)}); "
                            "test on videos the model has not seen")
    with pytest.raises(DataError, match=r"shares 3 videos with those .* was chosen on \(its validation list\)"):
        run_evaluate(test_list=str(tiny_shards.val_list), **kw)
    assert run_evaluate(test_list=str(tiny_shards.test_list), **kw)["num_videos"] == 3  # held out: scored


def test_a_full_disk_while_saving_leaves_the_previous_results_and_scores_whole(tiny_shards, runs, tmp_path,
                                                                              monkeypatch) -> None:
    import errno

    kw = dict(shards=str(tiny_shards.root), test_list=str(tiny_shards.test_list), spatial=None,
              temporal=str(runs["temporal"]), samples=1, device=CPU, out=tmp_path / "r.json", workers=0,
              show_progress=False)
    run_evaluate(**kw)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.suffix in (".json", ".npz")}

    def savez_on_a_full_disk(file, **arrays):
        file.write(b"PK\x03\x04 half a zip")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", savez_on_a_full_disk)
    with pytest.raises(OSError, match="No space left"):
        run_evaluate(**kw)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.suffix in (".json", ".npz")} == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_evaluate_checks_the_checkpoint_stream_and_classes(tiny_shards, runs, tmp_path) -> None:
    with pytest.raises(ck.CheckpointError, match="is a spatial stream checkpoint, expected temporal"):
        run_evaluate(shards=str(tiny_shards.root), test_list=str(tiny_shards.test_list), spatial=None,
                     temporal=str(runs["spatial"]), device=CPU, out=tmp_path / "r.json", workers=0, show_progress=False)
    other = _save_run(tmp_path / "other", "temporal", ["Drift", "Expand", "Spin"], seed=0)
    with pytest.raises(ck.CheckpointError, match="index 2: 'Spin' vs 'Rotate'"):
        run_evaluate(shards=str(tiny_shards.root), test_list=str(tiny_shards.test_list), spatial=None,
                     temporal=str(other), device=CPU, out=tmp_path / "r.json", workers=0, show_progress=False)


def test_evaluate_amp_bf16_runs_the_forward_pass_in_bfloat16_on_the_cpu_and_without_it_the_scores_are_unchanged(
    tiny_shards, runs, tmp_path, monkeypatch
) -> None:
    """--amp as fit has it: the same choices, help and refusal (fp16 on the CPU); default auto is float32 on the CPU,
    so the scores are those of run_evaluate's default (what the other tests check), bit for bit."""
    from click.testing import CliRunner
    from torch.nn.modules.module import register_module_forward_hook

    from trainer.cli import main
    from trainer.config import AMP_FP16_ON_CPU

    seen: list[torch.dtype] = []

    def conv_output_dtype(module, args, output) -> None:
        if isinstance(module, torch.nn.Conv2d):
            seen.append(output.dtype)

    common = ["evaluate", "--shards", tiny_shards.root, "--test-list", tiny_shards.test_list, "--temporal",
              runs["temporal"], "--samples", "2", "--workers", "0", "--device", "cpu", "--no-progress"]
    dtypes, scores = {}, {}
    handle = register_module_forward_hook(conv_output_dtype)
    try:
        for amp in ("default", "none", "bf16"):
            seen.clear()
            out = tmp_path / f"{amp}.json"
            result = CliRunner().invoke(main, [*map(str, common), "--out", str(out),
                                               *([] if amp == "default" else ["--amp", amp])])
            assert result.exit_code == 0, result.output
            dtypes[amp], scores[amp] = set(seen), load_scores(out.with_name(f"{amp}.scores.npz"))["temporal"]
    finally:
        handle.remove()
    assert dtypes == {"default": {torch.float32}, "none": {torch.float32}, "bf16": {torch.bfloat16}}
    precision = {amp: json.loads((tmp_path / f"{amp}.json").read_text())["precision"] for amp in dtypes}
    assert precision == {"default": "float32", "none": "float32", "bf16": "bfloat16"}  # results.json says which
    reference = run_evaluate(shards=str(tiny_shards.root), test_list=str(tiny_shards.test_list), spatial=None,
                             temporal=str(runs["temporal"]), samples=2, device=CPU, out=tmp_path / "api.json",
                             workers=0, show_progress=False)
    assert reference["temporal"] == json.loads((tmp_path / "default.json").read_text())["temporal"]
    assert np.array_equal(scores["default"], load_scores(tmp_path / "api.scores.npz")["temporal"])
    assert np.array_equal(scores["default"], scores["none"])
    assert not np.array_equal(scores["default"], scores["bf16"])  # bfloat16 keeps 8 bits of mantissa
    assert np.allclose(scores["default"], scores["bf16"], atol=0.05)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # --device auto on a machine without CUDA
    for device in ("cpu", "auto"):
        args = [*map(str, common), "--device", device, "--amp", "fp16", "--out", str(tmp_path / "fp16.json")]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        assert result.output.strip().splitlines()[-1] == f"Error: {AMP_FP16_ON_CPU}"
    assert not (tmp_path / "fp16.json").exists()
    text = " ".join(CliRunner().invoke(main, ["evaluate", "--help"]).output.split())
    assert "CPU: auto = none (float32, bit-exact runs); bf16 runs in bfloat16" in text and "fp16 is refused" in text


def test_a_second_evaluate_or_fuse_into_the_same_out_is_busy_and_a_killed_runs_lock_is_taken_over(
        tiny_shards, runs, tmp_path) -> None:
    """Two evaluate (or fuse) runs into one --out at once could leave results.json of one beside the PNGs and scores
    of the other. Now each holds <out>.lock (fit's lock): while a real evaluate holds it, a second evaluate or fuse
    is busy, exit 4 and one line naming the holder, and writes nothing; once that run is killed, the next takes the
    lock over."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from click.testing import CliRunner

    from trainer.cli import main

    out = tmp_path / "results.json"
    args = ["evaluate", "--shards", tiny_shards.root, "--test-list", tiny_shards.test_list, "--temporal",
            runs["temporal"], "--samples", "1", "--workers", "0", "--device", "cpu", "--no-progress", "--out", out]
    lock = tmp_path / "results.json.lock"
    first = subprocess.Popen([sys.executable, "-m", "trainer", *map(str, args)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (lock.exists() and lock.read_text().strip()) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        first.send_signal(signal.SIGSTOP)  # holds the lock, as a long evaluation would
        assert first.poll() is None and not out.exists(), \
            f"the first evaluate finished without the test seeing it hold {lock.name}"
        scores = tmp_path / "other.scores.npz"
        p = np.random.default_rng(0).dirichlet(np.ones(3), size=6)
        np.savez_compressed(scores, classes=np.array(tiny_shards.classes), labels=np.arange(6) % 3, temporal=p)
        before = {f: f.stat().st_mtime_ns for f in tmp_path.iterdir()}  # (the first may be stopped in its probe)
        for second in (args, ["fuse", "--scores", scores, "--out", out]):
            result = CliRunner().invoke(main, [str(a) for a in second])
            assert result.exit_code == 4, result.output
            assert result.output.strip() == (f"Error: {tmp_path} is being written by another run (host "
                                             f"{os.uname().nodename}, pid {first.pid}, started "
                                             f"{json.loads(lock.read_text())['started']}; lock {lock.name}): wait for "
                                             "it to finish, or use another --out")
        assert {f: f.stat().st_mtime_ns for f in tmp_path.iterdir()} == before  # the second ones wrote nothing
    finally:
        first.kill()
        first.wait()
    result = CliRunner().invoke(main, [str(a) for a in ["fuse", "--scores", scores, "--out", out]])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["scores"] == str(scores) and not lock.exists()
