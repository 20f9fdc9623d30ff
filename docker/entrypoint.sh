#!/bin/sh
# The container's entry: the first argument picks the role; exec so signals reach it directly
# (SIGTERM: gunicorn drains requests, the RQ worker finishes the provider call in hand).
set -eu
role="${1:-api}"
if [ "$#" -gt 0 ]; then shift; fi
case "$role" in
  api)       exec smsgw api "$@" ;;
  worker)    exec smsgw worker "$@" ;;
  simulator) exec smsgw-simulator --host 0.0.0.0 --port 8081 "$@" ;;
  *)         exec "$role" "$@" ;;
esac
