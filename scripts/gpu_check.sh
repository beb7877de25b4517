#!/usr/bin/env bash
# The GPU paths end to end on one machine with a GPU (CI never has one): training in bf16 on a
# GPU worker (DDP on NCCL), scoring on a GPU actor with torch and with onnxruntime (the onnx
# backend, compared with torch's scores), scoring throughput on the GPU against the
# plain loop, then serving from a GPU replica (last: it needs curl, which a bare image may
# lack). GPUS=0 rehearses every step on CPU, to check this script before spending GPU time.
# Runs in a few minutes; stops at the first failure.
#   usage: scripts/gpu_check.sh [WORK_DIR]     (default out/gpu_check)
#   env:   PY (default .venv/bin/python), GPUS (per actor/replica, default 1), ROWS (default 100000; 1000 when
#          GPUS=0), CPU_ROWS (a last, CPU-only scoring benchmark on the GPU machine's cores; default 20000, 0 skips)
set -euo pipefail
export PY=${PY:-.venv/bin/python}
GPUS=${GPUS:-1}
WORK=${1:-out/gpu_check}
USE_GPU=$([ "$GPUS" = 0 ] && echo false || echo true)
ROWS=${ROWS:-$([ "$USE_GPU" = true ] && echo 100000 || echo 1000)}  # a CPU rehearsal checks, not measures
CPU_ROWS=${CPU_ROWS:-20000}
step() { echo; echo "== $* ($(date +%T))"; }

step device
if [ "$USE_GPU" = true ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c 'import torch; assert torch.cuda.is_available(), "torch sees no GPU"; print("torch", torch.__version__)'
  # The image's own packages with versions (not an offline bundle's from PYTHONPATH): the rest of
  # this line is the HAVE.txt with which scripts/offline_bundle.sh packs what agrees with them.
  echo "image packages: $(PYTHONPATH= "$PY" -m pip list --format freeze 2>/dev/null | paste -sd, -)"
fi
"$PY" -m distdl demo-data data/digits

step "train: digits CNN, bf16, scaling.use_gpu=$USE_GPU"
"$PY" -m distdl train jobs/cnn_digits.yaml --fresh --set name=cnn_digits_gpu --set "storage=$WORK/runs" \
  --set train.precision=bf16 --set scaling.use_gpu=$USE_GPU --set scaling.num_workers=1
CKPT=$WORK/runs/cnn_digits_gpu/best

step "score: --gpus $GPUS"
"$PY" -m distdl score --checkpoint "$CKPT" --input data/digits/holdout.parquet --output "$WORK/scores" \
  --overwrite --gpus "$GPUS"

step "score: --backend onnx --gpus $GPUS, against the torch scores above"
# The exported model run by onnxruntime's CUDA provider (CPU provider when GPUS=0). make installs the
# CPU-only onnxruntime: on a GPU machine the onnxruntime-gpu package must replace it.
if [ "$USE_GPU" = true ] && ! "$PY" -c 'import onnxruntime as o, sys; sys.exit("CUDAExecutionProvider" not in o.get_available_providers())'; then
  echo "this onnxruntime has no CUDAExecutionProvider: pip install onnxruntime-gpu, then run again" >&2; exit 1
fi
"$PY" -m distdl score --checkpoint "$CKPT" --input data/digits/holdout.parquet --output "$WORK/scores_onnx" \
  --overwrite --gpus "$GPUS" --backend onnx
"$PY" - "$WORK/scores" "$WORK/scores_onnx" <<'PARITY'
import sys
import pyarrow.parquet as pq
torch_rows, onnx_rows = (pq.read_table(d, columns=["id", "label", "probability"]).sort_by("id").to_pydict() for d in sys.argv[1:])
assert torch_rows["id"] == onnx_rows["id"], "the two outputs hold different rows"
delta = max(abs(a - b) for a, b in zip(torch_rows["probability"], onnx_rows["probability"]))
same = sum(a == b for a, b in zip(torch_rows["label"], onnx_rows["label"])) / len(torch_rows["label"])
print(f"onnx vs torch over {len(torch_rows['id'])} rows: labels agree on {same:.2%}, max |d probability| {delta:.2e}")
assert same >= 0.99 and delta <= 1e-2, "the onnx backend's scores differ from torch's"
PARITY

step "scoring throughput: ResNet-18 32x32, $ROWS rows"
# One GPU actor decodes rows on one CPU; a quarter GPU each lets four decode for the same GPU.
# 100k rows check the path; (b)'s 7-11 s start-up decides them. ROWS=1000000 shows the rate (~5 min more).
"$PY" benchmarks/score_throughput.py --rows "$ROWS" --gpus "$GPUS" $([ "$USE_GPU" = true ] && echo --gpus 0.25)

step "serve: gpus_per_replica=$GPUS"
command -v curl >/dev/null || { echo "no curl here: serving not checked" >&2; exit 1; }
bash scripts/serve_demo.sh "$CKPT" --set "gpus_per_replica=$GPUS"

if [ "$USE_GPU" = true ] && [ "$CPU_ROWS" != 0 ]; then
  step "scoring throughput on this machine's $(nproc) CPU cores: ResNet-18 32x32, $CPU_ROWS rows"
  "$PY" benchmarks/score_throughput.py --rows "$CPU_ROWS"  # an actor pool on more than 2 cores
fi
step done
