#!/usr/bin/env bash
# One command, one GPU, under 10 minutes: the demo and a Kermany fine-tuning at 224 px on CUDA,
# printing images/s and test AUROC per strategy. Usage (from the repository root):
#
#   bash benchmarks/gpu_check.sh [KERMANY_DIR] [OUT_DIR]
#
# KERMANY_DIR defaults to ../shared/data/chest_xray_pneumonia_224 (train/ and test/ with NORMAL/ and
# PNEUMONIA/). Everything runs offline. Exit code non-zero when no GPU is visible or a step fails.
set -euo pipefail
DATA="${1:-../shared/data/chest_xray_pneumonia_224}"
OUT="${2:-runs/gpu_check}"
PY="${PYTHON:-python}"

"$PY" - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA GPU visible to torch")
p = torch.cuda.get_device_properties(0)
print(f"gpu_check: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, "
      f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no (fp16 + grad scaler)'}")
PY

summary() {  # images/s and test AUROC of every strategy of a run folder
  "$PY" - "$1" <<'PY'
import json, sys
s = json.load(open(f"{sys.argv[1]}/summary.json"))
print(f"== {sys.argv[1]}: device {s['device']}, precision {s['precision']}, "
      f"{s['dataset']['n_train']} train / {s['dataset']['n_test']} test images, {s['image_size']} px")
for name, r in s["strategies"].items():
    ips = r.get("images_per_s")
    print(f"   {name:20s} {r.get('status'):8s} test AUROC {r.get('test_auroc') or float('nan'):.4f}  "
          f"images/s {ips if ips is None else round(ips, 1)}  train {r.get('train_seconds') or 0:.1f}s")
PY
}

start=$(date +%s)
# 1. the demo (synthetic phantom DICOMs, EfficientNet-Lite0 at 128 px, three strategies) on the GPU
timeout 240 "$PY" -m medtl compare --config configs/demo.yaml --device cuda --out "$OUT/demo" --quiet
summary "$OUT/demo"

# 2. Kermany at 224 px (configs/kermany_fine_tuning.yaml: patient-grouped validation, 5 epochs):
#    feature extraction and LP-FT fine-tuning, batch 64, on the GPU
if [ -d "$DATA/train" ]; then
  timeout 420 "$PY" -m medtl compare --config configs/kermany_fine_tuning.yaml --data "$DATA" \
    --strategies feature_extraction,fine_tuning --batch-size 64 --device cuda \
    --out "$OUT/kermany224" --quiet
  summary "$OUT/kermany224"
else
  echo "gpu_check: $DATA/train not found; Kermany step skipped" >&2
fi
echo "gpu_check: done in $(( $(date +%s) - start )) s"
