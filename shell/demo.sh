#!/usr/bin/env bash
# End-to-end demo on the synthetic multilingual pedestrian dataset, on the CPU:
# generate the data (once), train the small model of config/demo.yaml, evaluate en + ch.
#   bash shell/demo.sh [OUTDIR=runs/demo] [key.sub=value ...]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/demo}
shift $(( $# > 0 ? 1 : 0 ))
DATA=runs/synthetic
start=$(date +%s)
if [ ! -f "$DATA/annos/test_reid_en.json" ]; then
  python -m data.synthetic --out "$DATA"
fi
python main.py --config config/demo.yaml model.saved_path="$OUT" "$@"
echo "demo finished in $(( $(date +%s) - start )) s; outputs in $OUT"
