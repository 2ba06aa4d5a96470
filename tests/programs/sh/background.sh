#!/bin/sh
# Save TEXT to TARGET (temp file, sync, mv, sync the directory) in a background subshell.
#
# usage: sh background.sh correct|buggy TARGET TEXT
#
# correct: `( save ) &` then `wait` for it, and exit with its status.
# buggy:   `( save ) &` and exit 0 at once: the command has "succeeded" while the state is
#          still the old one. (The subshell waits until this shell is gone, with GNU tail's
#          --pid, as a slow save would.)
set -eu
mode=$1 target=$2 text=$3
save() {
    tmp=$target.tmp
    trap 'rm -f "$tmp"' EXIT
    printf '%s' "$text" > "$tmp"
    sync "$tmp"
    mv "$tmp" "$target"
    trap - EXIT
    sync "$(dirname "$target")"
}
echo "saving $target in the background"
if [ "$mode" = buggy ]; then
    ( tail --pid=$$ -s 0.05 -f /dev/null; save ) &
    echo "progress: started" >&2
    exit 0
fi
( save ) &
wait $!
echo saved
