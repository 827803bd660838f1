#!/usr/bin/env bash
# Proxmox VE benchmark: 50 emulated guests, 200 ms tasks, `snap --keep 2` with
# --max-parallel 1 and 8 in one run; prints both times and the ratio (goal ≥ 5x).
# Usage: bench/pve.sh [-n 50] [-task 200ms] [-par 8]
set -euo pipefail
cd "$(dirname "$0")/.."
exec go run ./bench/pve "$@"
