#!/usr/bin/env bash
# Every GPU check of issue 14 (PyTorch TV-L1) in one device call, at most 8.5 minutes on one H200 (the sum
# of the step limits; run it with timeout_s 570):
#   1. the solver's tests, CUDA test included (tests/flowprep/torchflow/test_tvl1.py)      <= 90 s
#   2. agreement with OpenCV and EPE on CUDA (benchmarks/flow_quality.py --device cuda) <= 100 s
#   3. pairs/s per batch size, GPU memory, profile (benchmarks/tvl1_gpu.py)            <= 120 s
#   4. the whole flowprep extract --engine torch --device cuda (workers on every core,   <= 90 s
#      one flow process) on 32 clips of 65 frames of vtest.avi, next to the solver alone at batch 128
#   5. the solver with torch.compile of the inner iteration, batches 64 and 256          <= 100 s
#      (default stopping sum "guarded": OpenCV's decisions, one host sync per step; a later run can
#      compare --stop-sum float64, no syncs)
# Everything lands in $OUT (env.txt, *.log, *.json). A step that fails or times out is recorded and the
# next one still runs.
#
# Before the call, on the session's machine (the media and, if the device lacks OpenCV's contrib
# module, its wheel travel in ignored folders, ~9 MB + ~60 MB, within the 64 MiB carry limit only
# without the wheel; check env.txt of a first short run if unsure):
#   mkdir -p bench-out/media && cp /tmp/ocvdoc/usr/share/doc/opencv-doc/examples/data/{vtest.avi,rubberwhale1.png,rubberwhale2.png} bench-out/media/
# then run (carry ["bench-out/media"], timeout_s 540):
#   OUT=$OUT bash benchmarks/gpu_check.sh
# Optional: EXTRA_SITE=/tmp/site (a --target install of extra wheels) is put on PYTHONPATH.
set -u
: "${OUT:?set OUT to the output folder}"
mkdir -p "$OUT"
MEDIA=${FLOWPREP_MEDIA:-bench-out/media}
export PYTHONPATH="$PWD${EXTRA_SITE:+:$EXTRA_SITE}"
PY=${PYTHON:-python3}
step() {  # step NAME SECONDS CMD...: run, keep its output and exit status
    local name=$1 secs=$2
    shift 2
    local t0=$SECONDS
    timeout "$secs" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc seconds=$((SECONDS - t0))" | tee -a "$OUT/steps.txt"
}

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    nproc
    $PY - <<'EOF'
import sys, torch, cv2
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else None)
print("opencv", cv2.__version__, "optflow", hasattr(cv2, "optflow"), "ipp", cv2.ipp.useIPP())
import importlib.util
print("present:", {m: importlib.util.find_spec(m) is not None for m in ("av", "click", "pytest", "h5py", "decord")})
EOF
    ls -la "$MEDIA" 2>&1
    git rev-parse HEAD 2>/dev/null
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# addopts of setup.cfg name pytest-timeout, which the device may lack
step pytest_tvl1 90 $PY -m pytest tests/flowprep/torchflow/test_tvl1.py -q -rs -p no:cacheprovider \
    -o addopts="--import-mode=importlib"
step flow_quality_cuda 100 $PY -m benchmarks.flow_quality --device cuda --batch 16 --media "$MEDIA" \
    --out "$OUT/flow_quality-cuda.json"
step tvl1_gpu 120 $PY -m benchmarks.tvl1_gpu --device cuda --batches 1,16,64,128,256,512 --max-seconds 8 \
    --media "$MEDIA" --profile --pipeline-videos 0 --out "$OUT/tvl1_gpu.json"
step pipeline 90 $PY -m benchmarks.tvl1_gpu --device cuda --batches 128 --max-seconds 5 --opencv-pairs 0 \
    --pipeline-videos 32 --pipeline-frames 65 --flow-batch 128 --media "$MEDIA" --out "$OUT/pipeline.json"
step tvl1_gpu_compiled 100 $PY -m benchmarks.tvl1_gpu --device cuda --batches 64,256 --max-seconds 8 --opencv-pairs 0 \
    --pipeline-videos 0 \
    --media "$MEDIA" --compile --out "$OUT/tvl1_gpu-compiled.json"
tail -n 3 "$OUT"/*.log
