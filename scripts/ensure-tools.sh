#!/usr/bin/env bash
# Programs that tests and benchmarks run but the build does not need (curl for
# the Unix-socket server test, wrk for `fastsock bench --workloads http`).
# Installs the missing ones with apt-get when running as root; otherwise says
# which are missing and goes on: what needs them is skipped with that reason.
#
#   scripts/ensure-tools.sh curl wrk
set -uo pipefail

missing=()
for tool in "$@"; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "fastsock: ${missing[*]} not installed (e.g. sudo apt-get install" \
         "${missing[*]}); what needs them will be skipped" >&2
    exit 0
fi
echo "fastsock: installing ${missing[*]} with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null \
        || echo "fastsock: could not install ${missing[*]}; what needs them" \
                "will be skipped" >&2
fi
exit 0
