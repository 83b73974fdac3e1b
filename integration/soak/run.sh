#!/usr/bin/env bash
# The soak test at full length: 30 minutes by default (`cargo test` runs the 3-minute CI size).
#   integration/soak/run.sh            # 30 minutes
#   integration/soak/run.sh 3600       # any length, in seconds
# Prints a sample every 10 s (RSS, CPU, the clients' totals and flowtel's) and fails if RSS keeps
# growing after the warm-up or if the totals differ from the clients'. Needs root, nftables.
set -euo pipefail
cd "$(dirname "$0")/../.."
export FLOWTEL_SOAK_SECS="${1:-1800}"
exec cargo test --release --locked --test soak -- --nocapture
