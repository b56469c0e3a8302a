#!/usr/bin/env bash
# Remove every result and generated artefact of the search, then recreate the empty folders.
# Usage: ./delete_results.sh [-y]     (-y: do not ask)
set -euo pipefail
cd "$(dirname "$0")"
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  echo "Usage: ./delete_results.sh [-y]  removes results/, results.pkl, TensorBoard/, weights/, layers/,"
  echo "analysis/ and the model plots, then recreates the empty folders; -y skips the question."
  exit 0
fi
targets=(results results.pkl TensorBoard weights layers analysis model_demo.png model_best.png)
# A running search holds this lock (see utils.RunLock) and would write its trials back.
lock=results/.search.lock
if [[ -f "$lock" ]] && command -v flock >/dev/null && ! flock -n "$lock" true; then
  echo "error: a search is running on results/ ($(cat "$lock")); stop it first (Ctrl-C), then rerun" >&2
  exit 1
fi
if [[ "${1:-}" != "-y" ]]; then
  echo "This deletes: ${targets[*]}"
  read -r -p "Delete them? [y/N] " answer
  [[ "$answer" =~ ^[Yy]$ ]] || { echo "Nothing deleted."; exit 0; }
fi
rm -rf -- "${targets[@]}"
for folder in results TensorBoard weights layers; do
  mkdir -p "$folder" && touch "$folder/.gitkeep"
done
echo "Deleted; empty results/, TensorBoard/, weights/ and layers/ recreated."
