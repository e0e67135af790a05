#!/bin/bash
# The headline figures of REPRODUCTION.md, drawn again from the committed records:
#   bash docs/figures/regenerate.sh
# (tadlora report study/records writes one report per sweep; the figures are copied from them.)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
.venv/bin/tadlora report study/records --out "$out"
cp "$out/testbed_map/phase_tad_minus_lora_0.png" docs/figures/testbed_tad_minus_lora.png
cp "$out/testbed_t/phase_best_T_0.png" docs/figures/testbed_best_T.png
cp "$out/paper_sst2/acc_vs_p__sst2.png" docs/figures/paper_sst2_acc_vs_p.png
cp "$out/paper_sst2/acc_vs_T__sst2.png" docs/figures/paper_sst2_acc_vs_T.png
echo "figures: docs/figures/*.png"
