#!/usr/bin/env bash
# Every GPU check of issue 14 (PyTorch TV-L1) in one device call, at most BUDGET_S = 555 s on one H200
# (steps are cut to what is left of it; run it with timeout_s 590):
#   1. the solver's tests, CUDA test included (tests/flowprep/torchflow/test_tvl1.py)      <= 90 s
#   2. agreement with OpenCV and EPE on CUDA (benchmarks/flow_quality.py --device cuda) <= 100 s
#   3. pairs/s per batch size, GPU memory, profile (benchmarks/tvl1_gpu.py)            <= 120 s
#   4. the whole flowprep extract --engine torch --device cuda (workers on every core,   <= 90 s
#      one flow process) on 32 clips of 65 frames of vtest.avi, next to the solver alone at batch 128
#   5. a hung flow process on the GPU (SIGSTOP; tests/flowprep/torchflow/test_service.py     <= 75 s
#      -k hung with FLOWPREP_TEST_DEVICE=cuda): exit 75 in one line, nothing left, the rerun verifies
#   5b. SIGTERM to a run with a CUDA flow process (tests/flowprep/test_stopping.py, the same     <= 60 s
#      variable): exit 143 in one line, no process or shared memory block left
#   6. the solver with torch.compile of the inner iteration, batches 64 and 256          <= 100 s
#      (default stopping sum "guarded": OpenCV's decisions, one host sync per step; a later run can
#      compare --stop-sum float64, no syncs)
# Everything lands in $OUT (env.txt, *.log, *.json). A step that fails or times out is recorded and the
# next one still runs. The whole script stays within BUDGET_S (default 555 s): a step gets at most what is
# left of it (less 15 s for the last lines), and one with under 20 s left is skipped (recorded as rc=skipped).
#
# Dry run on any CPU machine (proves the commands still run; no GPU figures; ~3-4 minutes on 2 busy cores):
#   SMOKE=1 OUT=/tmp/gpu-check-smoke bash benchmarks/gpu_check.sh
# (--smoke sizes on the CPU, the hang check on --device cpu, no torch.compile step.)
#
# Before the call, on the session's machine (the media and, if the device lacks OpenCV's contrib
# module, its wheel travel in ignored folders, ~9 MB + ~60 MB, within the 64 MiB carry limit only
# without the wheel; check env.txt of a first short run if unsure):
#   mkdir -p bench-out/media && cp /tmp/ocvdoc/usr/share/doc/opencv-doc/examples/data/{vtest.avi,rubberwhale1.png,rubberwhale2.png} bench-out/media/
# then run (carry ["bench-out/media"], timeout_s 590):
#   OUT=$OUT bash benchmarks/gpu_check.sh
# Optional: EXTRA_SITE=/tmp/site (a --target install of extra wheels) is put on PYTHONPATH.
set -u
: "${OUT:?set OUT to the output folder}"
mkdir -p "$OUT"
MEDIA=${FLOWPREP_MEDIA:-bench-out/media}
export PYTHONPATH="$PWD${EXTRA_SITE:+:$EXTRA_SITE}"
PY=${PYTHON:-python3}
SMOKE=${SMOKE:-}
BUDGET_S=${BUDGET_S:-555}
step() {  # step NAME SECONDS CMD...: run, keep its output and exit status; never past BUDGET_S
    local name=$1 secs=$2
    shift 2
    local left=$((BUDGET_S - 15 - SECONDS))
    if ((left < 20)); then
        echo "$name rc=skipped seconds=0 (budget spent)" | tee -a "$OUT/steps.txt"
        return
    fi
    ((secs > left)) && secs=$left
    local t0=$SECONDS
    timeout -k 5 "$secs" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc seconds=$((SECONDS - t0))" | tee -a "$OUT/steps.txt"
}
if [[ -n "$SMOKE" ]]; then
    DEV=cpu SMOKE_FLAG=--smoke
else
    DEV=cuda SMOKE_FLAG=
fi

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    nproc
    timeout 60 $PY - <<'EOF'
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
step flow_quality_$DEV 100 $PY -m benchmarks.flow_quality --device $DEV --batch 16 --media "$MEDIA" $SMOKE_FLAG \
    --out "$OUT/flow_quality-$DEV.json"
step tvl1_gpu 120 $PY -m benchmarks.tvl1_gpu --device $DEV --batches 1,16,64,128,256,512 --max-seconds 8 \
    --media "$MEDIA" --profile --pipeline-videos 0 $SMOKE_FLAG --out "$OUT/tvl1_gpu.json"
step pipeline 90 $PY -m benchmarks.tvl1_gpu --device $DEV --batches 128 --max-seconds 5 --opencv-pairs 0 \
    --pipeline-videos 32 --pipeline-frames 65 --flow-batch 128 --media "$MEDIA" $SMOKE_FLAG --out "$OUT/pipeline.json"
step hang 75 env FLOWPREP_TEST_DEVICE=$DEV $PY -m pytest tests/flowprep/torchflow/test_service.py -k hung -q -rs \
    -p no:cacheprovider -o addopts="--import-mode=importlib"
step sigterm 60 env FLOWPREP_TEST_DEVICE=$DEV $PY -m pytest tests/flowprep/test_stopping.py -q -rs \
    -k "sigterm_stops_the_workers_and_the_flow_process" -p no:cacheprovider -o addopts="--import-mode=importlib"
if [[ -z "$SMOKE" ]]; then  # compiling takes minutes on a CPU
    step tvl1_gpu_compiled 100 $PY -m benchmarks.tvl1_gpu --device cuda --batches 64,256 --max-seconds 8 \
        --opencv-pairs 0 --pipeline-videos 0 --media "$MEDIA" --compile --out "$OUT/tvl1_gpu-compiled.json"
fi
tail -n 3 "$OUT"/*.log
echo "total seconds=$SECONDS of BUDGET_S=$BUDGET_S" | tee -a "$OUT/steps.txt"
