#!/bin/sh
# A user's guest program: the scenario copies it in and runs it (busybox sh).
echo "hello $1"
/usr/bin/wdfhil-agent info | grep -q 'READY' && echo "device READY"
exit "${2:-0}"
