#!/bin/sh
# A user's own guest program (copied in and run by driver-guest-program.scenario.yaml): it
# talks to the driver under test through /dev/wdfio0 with plain shell tools. The echo
# sample keeps the last write and gives it back on a read.
set -e
message="${1:-hello}"
printf '%s' "$message" > /dev/wdfio0
got=$(dd if=/dev/wdfio0 bs=4096 count=1 2>/dev/null)
echo "read back: $got"
if [ "$got" != "$message" ]; then
    echo "expected: $message" >&2
    exit 1
fi
