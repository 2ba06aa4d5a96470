#!/bin/sh
# Save TEXT to TARGET.
#
# usage: sh in_place.sh correct|buggy TARGET TEXT
#
# correct: write a temp file, `sync` it, `mv` it over TARGET, `sync` the directory.
# buggy:   `printf ... > TARGET`: the shell truncates TARGET, then writes. A crash (even of the
#          process alone) between the two leaves an empty file, and a full disk leaves it empty
#          or cut short.
set -eu
mode=$1 target=$2 text=$3
echo "saving $target"
if [ "$mode" = buggy ]; then
    printf '%s' "$text" > "$target"
    echo saved
    exit 0
fi
tmp=$target.tmp
trap 'rm -f "$tmp"' EXIT
printf '%s' "$text" > "$tmp"
sync "$tmp"
mv "$tmp" "$target"
trap - EXIT
sync "$(dirname "$target")"
echo "progress: renamed" >&2
echo saved
