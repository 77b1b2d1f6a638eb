#!/bin/sh
# Boot benchmark, pybootd against dnsmasq (issue 4) and, over HTTP, against
# dnsmasq + Python's http.server: see scripts/bench_boot.py.
#   sudo scripts/bench_boot.sh [--runs 5] [--only bios|mirror|http] [--json out.json] [--keep]
exec python3 "$(dirname "$0")/bench_boot.py" "$@"
