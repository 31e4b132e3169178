#!/bin/sh
# Command channel of the alerts scenario: appends every alert it gets on stdin to a root-only file.
umask 077
{ cat; echo "----"; } >> /var/log/agentops-test-alert-sink.log
