#!/usr/bin/env bash
# End-to-end demo on the synthetic multilingual pedestrian dataset, on the CPU:
# generate the data (once), then train in two stages, as real users fine-tune a pretrained model:
#   1. "pretraining" on the synthetic training split with ITC only (itm.weight=0: a step costs
#      about a third of a four-loss step; ITM and the fusion layer keep their initialisation),
#      2,800 steps whose learning rate ends at 3e-4 rather than near 0 (stage 2 anneals; val R1
#      56 against 45 at the same step count, docs/benchmarks.md), exported in the CCLM-X2VLM
#      key layout (tools/export_cclm.py);
#   2. Bi-IRRA with all four losses (config/demo.yaml), loading that file through
#      model.resume exactly as the real cclm_x2vlm_base.th is loaded; evaluates en + ch on test.
#   bash shell/demo.sh [OUTDIR=runs/demo] [key.sub=value ...]   (overrides apply to stage 2)
set -euo pipefail
cd "$(dirname "$0")/.."
. shell/venv.sh   # creates or updates .venv from requirements.txt, then activates it
ensure_venv
OUT=${1:-runs/demo}
shift $(( $# > 0 ? 1 : 0 ))
DATA=runs/synthetic
PRE=$OUT/pretrain
start=$(date +%s)
python -m synthetic --out "$DATA" --train-ids 3200 --reuse
python main.py --config config/demo.yaml model.saved_path="$PRE" model.resume= \
  itm.weight=0 mlm.is_mlm=false mim.use_mim=false schedule.lr=1e-3 schedule.epoch=7 schedule.steps_per_epoch=400 schedule.lr_end=3e-4
python -m tools.export_cclm --checkpoint "$PRE/checkpoint_last.pth" --out "$PRE/cclm_demo.th"
echo "stage 1 (pretraining) finished after $(( $(date +%s) - start )) s"
python main.py --config config/demo.yaml model.saved_path="$OUT" model.resume="$PRE/cclm_demo.th" "$@"
echo "demo finished in $(( $(date +%s) - start )) s; outputs in $OUT"
