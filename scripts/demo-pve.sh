#!/usr/bin/env bash
# autosnap Proxmox VE demo, without Proxmox: builds and starts the PVE API emulator
# (cmd/pve-emulator: a two-node cluster with a seeded mix of VMs and containers), shows the
# autosnap command lines a user would run against a real cluster, runs them, and stops the
# emulator. autosnap failures are reported and the demo goes on (the Proxmox driver may be
# work in progress). Environment: PVE_DEMO_PORT (default 8006), PVE_DEMO_GUESTS (12).
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
bin=${1:-bin/autosnap}
emu=bin/pve-emulator
port=${PVE_DEMO_PORT:-8006}
guests=${PVE_DEMO_GUESTS:-12}
GO=${GO:-go}

echo "==> building $emu"
CGO_ENABLED=0 "$GO" build -trimpath -o "$emu" ./cmd/pve-emulator || exit 1
if [ ! -x "$bin" ]; then
  echo "==> building $bin"
  CGO_ENABLED=0 "$GO" build -trimpath -o "$bin" ./cmd/autosnap || echo "!! could not build $bin; continuing with the emulator only"
fi

out=$(mktemp)
"$emu" --listen "127.0.0.1:$port" --nodes pve1,pve2 --guests "$guests" --task-duration 300ms >"$out" 2>"$out.err" &
emu_pid=$!
cleanup() {
  kill "$emu_pid" 2>/dev/null
  wait "$emu_pid" 2>/dev/null
  rm -f "$out" "$out.err"
}
trap cleanup EXIT

for _ in $(seq 100); do
  grep -q '^ready$' "$out" 2>/dev/null && break
  if ! kill -0 "$emu_pid" 2>/dev/null; then
    echo "!! the emulator did not start:"; cat "$out.err"; exit 1
  fi
  sleep 0.1
done
grep -q '^ready$' "$out" || { echo "!! the emulator did not become ready"; exit 1; }

field() { sed -n "s/^$1: //p" "$out" | head -n1; }
hosts=$(field hosts)
fp=$(field fingerprint)
token=$(field token)
echo "==> PVE API emulator (pid $emu_pid) is up"
sed -n 's/^node: /    node /p' "$out"
echo "    fingerprint  $fp"
echo "    API token    $token"
echo
echo "==> the API answers like PVE (curl, token auth):"
echo "    curl -sk -H 'Authorization: PVEAPIToken=$token' https://127.0.0.1:$port/api2/json/cluster/resources?type=vm"
curl -sk -H "Authorization: PVEAPIToken=$token" "https://127.0.0.1:$port/api2/json/version"; echo
echo

conn=(--host "$hosts" --api-token "$token" --fingerprint "$fp")
step() {
  echo "\$ $bin --host $hosts --api-token '$token' --fingerprint $fp $*"
  "$bin" "${conn[@]}" "$@"
  rc=$?
  [ $rc -eq 0 ] || echo "!! exit status $rc (continuing)"
  echo
}

if [ ! -x "$bin" ]; then
  echo "!! $bin is missing; skipping the autosnap commands"
  exit 0
fi
echo "==> the autosnap commands a user would run against a real cluster"
step --vmid @all vm list
for run in 1 2 3; do
  step --vmid @all snap --label demo --keep 2
  [ $run -lt 3 ] && sleep 1.1   # the default timestamp has one-second resolution
done
step --vmid @all status --label demo
step --vmid @pool-prod,-@tag-db snap --label hourly --keep 1
step --vmid @all clean --label demo --keep 0
echo "==> done; stopping the emulator"
