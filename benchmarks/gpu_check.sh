#!/usr/bin/env bash
# One device check on a GPU machine with no network: embedding throughput and distillation
# speed on the exact architectures at random init. Run from the repository root:
#
#     bash benchmarks/gpu_check.sh
#
# Needs the wheels songsight imports but the machine lacks, carried in .gpu/wheels
# (open_clip_torch, ftfy, wcwidth, soundfile, soxr, cffi, pycparser, usearch, numkong);
# they are installed with --no-deps, so pip never touches the machine's torch or transformers.
# Figures go to $OUT (default /tmp/songsight_gpu_check): env.txt, status.txt, embed.json,
# embed.txt, distill.json, distill.txt. Each step has a time limit and its exit status is
# recorded in status.txt; a failing step does not stop the next. Expected ~3-5 min;
# the time limits cap it at ~7 min.
set -u

OUT=${OUT:-/tmp/songsight_gpu_check}
mkdir -p "$OUT"
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH=src HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
STATUS="$OUT/status.txt"
ENV_TXT="$OUT/env.txt"
T0=$(date +%s)
: >"$STATUS"
exec 3>&1 # the console, for status lines written from inside redirected blocks

# step NAME LIMIT_S CMD...: run with a time limit, record rc and wall time, never abort.
step() {
    local name=$1 limit=$2
    shift 2
    local start rc
    start=$(date +%s)
    timeout --kill-after=10 "$limit" "$@"
    rc=$?
    echo "$name rc=$rc wall_s=$(($(date +%s) - start)) at_s=$(($(date +%s) - T0))" | tee -a "$STATUS" >&3
    return 0
}

{
    echo "== date"; date -u
    echo "== nvidia-smi"; nvidia-smi
    echo "== torch"
    "$PY" -c 'import sys, torch; print(sys.version); print(torch.__version__, torch.cuda.get_device_name())'
} >"$ENV_TXT" 2>&1
echo "env rc=$? at_s=$(($(date +%s) - T0))" | tee -a "$STATUS"

WHEELS=(open_clip_torch ftfy wcwidth soundfile soxr cffi pycparser usearch numkong)
step install 120 "$PY" -m pip install --no-index --no-deps --find-links .gpu/wheels \
    --disable-pip-version-check "${WHEELS[@]}" >>"$ENV_TXT" 2>&1
{
    echo "== versions"
    "$PY" -c '
import importlib.metadata as m
for name in ("torch", "torchvision", "transformers", "open_clip_torch", "timm", "ftfy", "soundfile",
             "soxr", "usearch", "numpy", "huggingface_hub", "tokenizers", "safetensors"):
    try:
        print(name, m.version(name))
    except m.PackageNotFoundError:
        print(name, "MISSING")
import open_clip, soundfile, soxr  # noqa: F401  the imports songsight needs
print("imports ok; libsndfile", soundfile.__libsndfile_version__)
'
} >>"$ENV_TXT" 2>&1
echo "imports rc=$? at_s=$(($(date +%s) - T0))" | tee -a "$STATUS"

WORK=$(mktemp -d /tmp/songsight_gpu.XXXXXX)

# Embedding throughput: songsight's file jobs (fp32, bf16) vs the naive per-file loops.
step embed 220 "$PY" benchmarks/embed_throughput.py --device cuda \
    --clips 384 --images 192 --audio-batch 16 --image-batch 32 --image-bf16 --repeats 2 \
    --work-dir "$WORK/shared" --out "$OUT/embed.json" >"$OUT/embed.txt" 2>&1

# Distillation speed: the real trainer at DistillConfig's batch (32), bf16 autocast.
# Reuses the model folders embed_throughput built, unless it failed (they may be partial).
DWORK="$WORK/shared"
if ! grep -q '^embed rc=0 ' "$STATUS"; then
    DWORK="$WORK/distill"
fi
step distill 140 "$PY" benchmarks/distill_speed.py --device cuda \
    --work-dir "$DWORK" --out "$OUT/distill.json" >"$OUT/distill.txt" 2>&1

{
    echo "== nvidia-smi after"
    nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv
} >>"$ENV_TXT" 2>&1
rm -rf "$WORK"
echo "total wall_s=$(($(date +%s) - T0))" | tee -a "$STATUS"

# The reports on the console too, in case the files do not come back.
for f in env.txt embed.txt distill.txt; do
    echo "===== $f (tail)"
    tail -n 45 "$OUT/$f" 2>/dev/null
done
exit 0
