#!/usr/bin/env bash
# Digits end to end, from the repository root after the setup of the top-level README:
#
#   examples/digits/run.sh
#
# makes the image-caption set from scikit-learn's handwritten digits, converts SmolLM2-135M-Instruct to a Hugging
# Face folder (skipped when models/smollm2 exists), trains an image encoder + projector into the frozen SmolLM2
# (examples/digits/train.yaml) on the CPU, and prints the held-out accuracy of its greedy answers and the time of
# every phase. Extra arguments go to `mimo train` (e.g. --set train.steps=50). Writes only under runs/digits/ and
# models/smollm2/ (both ignored by git).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export HF_HUB_OFFLINE=1

DATA=runs/digits/data
RUN=runs/digits
SECONDS=0
declare -a PHASES=()
phase_start=0
phase() { # phase NAME: close the previous phase, start this one
    local now=$SECONDS
    [[ ${#PHASES[@]} -gt 0 ]] && PHASES[-1]="${PHASES[-1]} $((now - phase_start)) s"
    phase_start=$now
    PHASES+=("$1:")
    echo "== $1"
}

phase "data"
.venv/bin/python examples/digits/make_dataset.py --out "$DATA" --no-speech

phase "smollm2"
if [[ -f models/smollm2/config.json && -f models/smollm2/model.safetensors ]]; then
    echo "models/smollm2 exists, not converted again"
else
    .venv/bin/mimo hf smollm2 --out models/smollm2
fi

phase "train"
rm -rf "$RUN/checkpoints" "$RUN/metrics.jsonl" "$RUN/eval.json"  # a fresh run each time, not a resume
.venv/bin/mimo train --config examples/digits/train.yaml "$@"

phase "evaluate"
.venv/bin/python examples/digits/evaluate.py --checkpoint "$RUN/checkpoints" --records "$DATA/heldout.json" \
    --out "$RUN/eval.json"

phase "done"
unset 'PHASES[-1]'
echo "time per phase: ${PHASES[*]}"
echo "total: $SECONDS s ($((SECONDS / 60)) min $((SECONDS % 60)) s) on $(nproc) CPU core(s)"
