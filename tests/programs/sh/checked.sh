#!/bin/sh
# Save TEXT to TARGET with the full recipe (temp file, sync, mv, sync the directory).
#
# usage: sh checked.sh correct|buggy TARGET TEXT
#
# correct: `set -e` and a trap: the first command that fails stops the save, and the temp file
#          is removed.
# buggy:   no `set -e`: when `printf` fails (a full disk, an I/O error) the script goes on, moves
#          an empty or truncated temp file over TARGET, and exits 0 (the status of its last
#          command).
mode=$1 target=$2 text=$3
tmp=$target.tmp
if [ "$mode" = correct ]; then
    set -e
    trap 'rm -f "$tmp"' EXIT
fi
echo "saving $target"
printf '%s' "$text" > "$tmp"
sync "$tmp"
echo "progress: renaming $tmp" >&2
mv "$tmp" "$target"
trap - EXIT
sync "$(dirname "$target")"
echo saved
