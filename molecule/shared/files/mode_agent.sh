#!/bin/sh
# Test agent of the alerts, channels, watcher and recovery scenarios: behaviour read every second from
# /etc/agentops-test/<name>.mode
#   ok    -> prints a progress line every second
#   hang  -> stays alive but prints nothing (hung-but-alive)
#   crash -> prints a line and exits 3 (Restart=on-failure restarts it until the start limit)
name="$1"
while true; do
    mode=$(cat "/etc/agentops-test/$name.mode" 2>/dev/null || echo ok)
    case "$mode" in
        crash) echo "test agent $name crashing on purpose"; exit 3 ;;
        hang) sleep 1 ;;
        *) echo "test agent $name working"; sleep 1 ;;
    esac
done
