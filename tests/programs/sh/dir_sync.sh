#!/bin/sh
# Save TEXT to TARGET: temp file, `sync` it, `mv` it over TARGET, then `sync` the directory.
#
# usage: sh dir_sync.sh correct|buggy TARGET TEXT
#
# coreutils `sync FILE` fsyncs FILE, and `sync DIR` fsyncs the directory.
# correct: the whole recipe; on any error the temp file is removed and the script exits 1.
# buggy:   no `sync` of the directory after `mv`. The script exits 0, yet after a power loss the
#          rename can be undone: TARGET reads as the old state after the save "succeeded".
set -eu
mode=$1 target=$2 text=$3
tmp=$target.tmp
trap 'rm -f "$tmp"' EXIT
echo "saving $target"
printf '%s' "$text" > "$tmp"
sync "$tmp"
echo "progress: renaming $tmp" >&2
mv "$tmp" "$target"
trap - EXIT
if [ "$mode" = correct ]; then
    sync "$(dirname "$target")"
fi
echo saved
