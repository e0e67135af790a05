#!/usr/bin/env bash
# Study runs on a lent GPU (issue 15), as one call of the device tool. Here, first:
#   .venv/bin/python study/device/pack.py pack ../shared/data/glue-lite/sst2    # -> .device/
# then the device tool's run, with carry=[".device"] and timeout_s a little above SECONDS:
#   bash study/device/run.sh SECONDS SWEEP.toml [--only KEY=V ...] [overrides ...]
# e.g. bash study/device/run.sh 540 sweeps/paper_t_sst2.toml --kept study/records --only run.seed=1,2
# It unpacks the model (exact for bf16 runs on the packed task, see pack.py), links ../shared
# to .device/shared (so every run's config names the same data.path as a run here), runs the
# sweep on cuda with 16 jobs for at most SECONDS, and packs the records of the finished runs
# into $OUT/records.tgz (here: tar xzf it in study/records/). Runs checkpoint every 10 rounds:
# calling it again at once, while the machine is warm, resumes the unfinished ones. The machine
# starts with no results/: --kept study/records leaves out the runs already recorded.
set -euo pipefail
seconds=$1 sweep=$2
shift 2
device=${DEVICE:-cuda}  # DEVICE=cpu: a dry run of this script on a machine without a GPU
if [ "$device" != cpu ] && ! python3 -c "import sys, torch
sys.exit(not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()))"; then
  echo "no CUDA device with bf16: the packed model is exact for bf16 runs only" >&2
  exit 1
fi
python3 study/device/pack.py unpack .device
[ -e ../shared ] || ln -s "$PWD/.device/shared" ../shared
export PYTHONPATH="$PWD:$PWD/.device/site" PYTHONUNBUFFERED=1
out_dir=$(python3 -c "import sys; from tadlora.study.sweep_file import load_sweep
print(load_sweep(sys.argv[1]).out_dir)" "$sweep")
status=0
timeout --signal=INT --kill-after=30 "$seconds" python3 -m tadlora.cli sweep "$sweep" \
  --jobs "${JOBS:-16}" "train.device=$device" "$@" > "$OUT/sweep.log" 2>&1 || status=$?
tail -n 30 "$OUT/sweep.log"
echo "sweep exit status $status (124: stopped at $seconds s; call again to resume)"
rm -rf /tmp/records
python3 -m tadlora.cli keep "$out_dir" "/tmp/records/$(basename "$out_dir")" || true
tar czf "$OUT/records.tgz" -C /tmp records 2>/dev/null || { rm -f "$OUT/records.tgz"; echo "no finished run to keep"; }
ls /tmp/records/* 2>/dev/null | head -n 40
