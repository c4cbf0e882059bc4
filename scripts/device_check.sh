#!/usr/bin/env bash
# One short run on a CUDA machine: correctness on the GPU, then the numbers issue #5 asks for.
# Usage: scripts/device_check.sh [OUTDIR]   (runs from a checkout; no install needed beyond torch,
# torchvision, numpy, pandas, matplotlib, jinja2 and tqdm). Without CIFAR-10 on the machine it
# trains on synthetic data of CIFAR-10's size and says so.
set -uo pipefail
out=${1:-${OUT:-/tmp/device_check}}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 XDG_CACHE_HOME=/tmp/vitgrade-cache VITGRADE_DATA=${VITGRADE_DATA:-/tmp/vitgrade-data}
py=${PYTHON:-python3}
# All four steps take longer than one 10-minute device call: run STEPS="tests check", then STEPS="bench fused".
steps=" ${STEPS:-tests check bench fused} "
step() { echo; echo "=== $1 ($(date +%T))"; }
wanted() { [[ "$steps" == *" $1 "* ]]; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
$py -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, torch.cuda.get_device_name())"

if wanted tests; then
step "CUDA correctness tests (reference on CUDA == CPU, on-device augmentation, trainer on CUDA)"
timeout 180 $py -m pytest -q -p no:cacheprovider tests/test_reference.py tests/test_training.py \
    -k "cuda or augmentation or never_needs" -rs 2>&1 | tee "$out/pytest.txt"
fi

if wanted check; then
step "dataset"
if $py -c "from grader.training.data import find_dataset; print(find_dataset(None).name)" 2>/dev/null; then
    echo "CIFAR-10 found"
else
    echo "no CIFAR-10 on this machine: SYNTHETIC data of CIFAR-10's size (50,000 + 10,000 images)"
    $py -m grader data synth --train 50000 --test 10000 --format npz
fi

step "full accuracy check of a correct example in the sandbox (reference trained with the same recipe)"
timeout 420 $py -m grader check assignments/vit_cifar10/examples/s1002_separate_qkv.py --accuracy full \
    --json "$out/report.json" 2>&1 | tee "$out/check.txt"
$py - "$out/report.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
print("sandbox:", report.get("sandbox"))
for check in report["checks"]:
    if check["id"] == "train.accuracy":
        d = check.get("details", {})
        keys = ("accuracy", "reference_accuracy", "threshold", "epochs", "train_seconds", "images_per_second",
                "device", "dataset", "synthetic_data", "compiled", "notes")
        print(check["status"], check["message"])
        print({k: d.get(k) for k in keys})
PY
fi

if wanted bench; then
step "bench: harness vs the handout loop, default configuration, synthetic CIFAR-10-sized images"
timeout 360 $py -m grader bench --device cuda --config default --images 50000 \
    ${BENCH_ARGS:---batch-size 512 1024 2048 --repeats 2 --profile} 2>&1 | tee "$out/bench.txt"
fi

if wanted fused; then
step "bench upper bound: the same model with the reference's fused attention (student models keep their own)"
timeout 200 $py -m grader bench --device cuda --config default --images 50000 --batch-size 1024 --repeats 2 \
    --fused-attention 2>&1 | tee "$out/bench_fused.txt"
fi
step "done"
