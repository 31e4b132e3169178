#!/bin/sh
# Test agent of the Molecule scenario "scheduled": one run per start (Type=oneshot, started by its timer).
# $1: tick | skipped (a short successful run) or slow (sleeps past its runtime_max).
set -eu
echo "scheduled run of $1 started"
date +%s >> "$HOME/runs.log"
if [ "$1" = slow ]; then
  sleep 60
fi
sleep 1
echo "scheduled run of $1 done"
