#!/usr/bin/env bash
# Remove every result and generated artefact of the search, then recreate the empty folders; or,
# given the results folder of a search run with --results-dir, remove only what that search wrote.
# Usage: ./delete_results.sh [-y] [RESULTS_DIR]     (-y: do not ask)
set -euo pipefail
usage="Usage: ./delete_results.sh [-y] [RESULTS_DIR]
  Without RESULTS_DIR: removes results/, results.pkl, TensorBoard/, weights/, layers/ and analysis/
  beside this script, then recreates the empty folders; refuses while a search or a retrain runs.
  With RESULTS_DIR (a search's --results-dir): removes its result files, its model plots, its
  trials pickle (RESULTS_DIR.pkl) and its analysis (analysis/NAME/, analyze_results.py's default
  for RESULTS_DIR NAME), and each folder if nothing else is left in it.
  -y: do not ask first."
yes=false
dir=
for arg in "$@"; do
  case "$arg" in
    -h|--help) echo "$usage"; exit 0 ;;
    -y) yes=true ;;
    -*) echo "error: unknown option $arg (--help says what it takes)" >&2; exit 2 ;;
    *) [[ -z "$dir" ]] || { echo "error: give one results folder at most" >&2; exit 2; }
       dir=${arg%/}; dir=${dir:-/} ;;  # "/" stays a folder, not the default of everything
  esac
done
if [[ -z "$dir" ]]; then
  cd "$(dirname "$0")"
  # A search's lock, and each retrain's, on its backup folder (retrain_best_with_tensorboard.claim_run).
  shopt -s nullglob
  locks=(results/.search.lock weights/*.backup/.search.lock)
  shopt -u nullglob
  targets=(results results.pkl TensorBoard weights layers analysis)
else
  # Only what a search writes there, so that a mistyped folder loses nothing else.
  locks=("$dir/.search.lock")
  # Its pickle is named as utils.trials_file_for names it: runs/a -> runs/a.pkl; "." after the folder.
  case "$(basename "$dir")" in .|..) pickle=$(cd "$dir" && pwd).pkl ;; *) pickle=$dir.pkl ;; esac
  shopt -s nullglob
  results=("$dir"/model_*.txt.json)
  targets=("${results[@]}" "$dir"/.model_*.tmp "$dir"/..trial_backup.npz.*.tmp.npz "$dir"/model_demo.png "$dir"/model_best.png)
  shopt -u nullglob
  [[ -f "${locks[0]}" ]] && targets+=("${locks[0]}")
  [[ -f "$dir/.running_trial" ]] && targets+=("$dir/.running_trial")  # a trial whose run died (trial.RUNNING_FILE)
  [[ -f "$dir/.trial_backup.npz" ]] && targets+=("$dir/.trial_backup.npz")  # a trial stopped mid-way (trial_backup.BACKUP_FILE)
  [[ -f "$pickle" ]] && targets+=("$pickle")
  if ((${#results[@]} == 0)) && [[ ! -f "$pickle" ]]; then
    echo "error: ${dir%/}/ holds no search results and there is no $pickle; nothing to delete" >&2
    exit 2
  fi
  # Its analysis, where analyze_results.py writes it by default (analysis_dir_for): analysis/NAME/ for runs/NAME.
  case "$dir" in
    results|./results) analysis=analysis ;;
    *) analysis=analysis/$(basename "$(cd "$dir" 2>/dev/null && pwd || echo "$dir")") ;;
  esac
  shopt -s nullglob
  analysed=("$analysis"/{trials,importance}.csv "$analysis"/{hyperparameters_vs_accuracy,scatter_matrix,convergence}.png
            "$analysis"/{top_trials_per_epoch,fine_vs_coarse,cost_vs_accuracy,importance}.png)
  shopt -u nullglob
  targets+=("${analysed[@]}")
fi
# A running search or retrain holds its lock (see utils.RunLock) and would write into what is deleted.
for lock in "${locks[@]}"; do
  [[ -f "$lock" ]] && command -v flock >/dev/null || continue
  if [[ -z "$dir" && "$lock" == weights/* ]]; then
    running="a retrain of $(basename "$(dirname "$lock")" .backup) is running"
  else
    running="a search is running on ${dir:-results}/"
  fi
  held=0
  flock -n -E 75 "$lock" true 2>/dev/null || held=$?
  if ((held == 75)); then
    echo "error: $running ($(cat "$lock")); stop it first (Ctrl-C), then rerun" >&2
    exit 1
  elif ((held)); then  # a filesystem without file locks (Lustre mounted noflock), where a search takes none either
    echo "warning: cannot tell whether $running: its filesystem has no file locks" >&2
  fi
done
if [[ "$yes" != true ]]; then
  if [[ -z "$dir" ]]; then
    echo "This deletes in $PWD/: ${targets[*]}"  # the script's folder, which need not be the one it was run from
  else
    echo "This deletes ${#results[@]} result file(s) in $dir/$([[ -f "$pickle" ]] && echo " and $pickle")$( ((${#analysed[@]})) && echo ", and its analysis in $analysis/")"
  fi
  if ! read -r -p "Delete them? [y/N] " answer; then  # no answer to read: run from a script, stdin closed
    printf '\nNothing deleted: no answer on stdin (-y deletes without asking).\n' >&2
    exit 1
  fi
  [[ "$answer" =~ ^[Yy]$ ]] || { echo "Nothing deleted."; exit 0; }
fi
rm -rf -- "${targets[@]}"
if [[ -z "$dir" ]]; then
  for folder in results TensorBoard weights layers; do
    mkdir -p "$folder" && touch "$folder/.gitkeep"
  done
  echo "Deleted; empty results/, TensorBoard/, weights/ and layers/ recreated in $PWD/."
else
  rmdir "$dir" 2>/dev/null || true
  ((${#analysed[@]} == 0)) || rmdir "$analysis" 2>/dev/null || true
  echo "Deleted the search in $dir/ (${#results[@]} result file(s))$( ((${#analysed[@]})) && echo " and its analysis in $analysis/")."
fi
