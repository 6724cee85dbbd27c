#!/usr/bin/env bash
# Copies the finished work of a sweep directory, without model weights, to another directory:
#
#   bash sweeps/archive.sh SWEEP_DIR DEST
#
# DEST gets the plan (sweep.toml, plan.jsonl, plan.json), the state of every entry that has
# ended (done, failed or diverged) with its run directory less its `*.safetensors` checkpoints
# (or its timing record), and the gathered files (results.*, aggregate.csv, tuning.json, report.html,
# figures/). Entries still running, interrupted or pending are left out: `diagc sweep run DEST`
# runs them from the start, and skips the rest. This is how docs/results/cpu-small/sweep was
# made, and how a sweep moves between machines that do not share a file system (copy the
# archive back, `diagc sweep run` it again). `diagc sweep report DEST` reads an archive as it
# reads the sweep (weights are not needed for the report).
set -euo pipefail
if [ $# -ne 2 ]; then
  echo "usage: bash sweeps/archive.sh SWEEP_DIR DEST" >&2
  exit 2
fi
src=$1
dest=$2
command -v jq >/dev/null || { echo "archive.sh needs jq (apt-get install jq)" >&2; exit 1; }
[ -f "$src/plan.json" ] || { echo "$src is not a sweep directory (no plan.json)" >&2; exit 1; }
mkdir -p "$dest/state"
cp "$src/sweep.toml" "$src/plan.jsonl" "$src/plan.json" "$dest/"
for f in results.csv results.jsonl aggregate.csv tuning.json report.html; do
  if [ -f "$src/$f" ]; then cp "$src/$f" "$dest/$f"; fi
done
if [ -d "$src/figures" ]; then
  rm -rf "$dest/figures"
  cp -r "$src/figures" "$dest/figures"
fi
kept=0
skipped=0
while IFS=$'\t' read -r name run_dir; do
  state="$src/state/$name.json"
  status=$( [ -f "$state" ] && jq -r '.status // ""' "$state" || echo "")
  case "$status" in
    done | failed | diverged) ;;
    *)
      skipped=$((skipped + 1))
      continue
      ;;
  esac
  cp "$state" "$dest/state/$name.json"
  if [ -d "$src/$run_dir" ]; then
    rm -rf "${dest:?}/$run_dir"
    mkdir -p "$dest/$run_dir"
    tar -C "$src/$run_dir" --exclude='*.safetensors' --exclude='*.tmp*' -cf - . | tar -C "$dest/$run_dir" -xf -
  elif [ -f "$src/$run_dir" ]; then
    mkdir -p "$(dirname "$dest/$run_dir")"
    cp "$src/$run_dir" "$dest/$run_dir"
  fi
  kept=$((kept + 1))
done < <(jq -r '[.name, .run_dir] | @tsv' "$src/plan.jsonl")
echo "archived $kept ended entries to $dest ($skipped running, interrupted or pending left out)"
