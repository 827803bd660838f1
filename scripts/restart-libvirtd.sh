#!/usr/bin/env bash
# Restarts libvirtd for the crash matrix (make crashtest): stops the running daemon,
# starts it again the way scripts/start-libvirt.sh does (systemd when it manages
# libvirtd, else `libvirtd -d`) and waits until `virsh list` answers. Running guests
# keep running; every libvirt client on the machine loses its connection, so nothing
# else may use libvirt meanwhile.
set -euo pipefail
here=$(dirname "$0")
uri=qemu:///system

if [ -d /run/systemd/system ] && systemctl is-active --quiet libvirtd.service 2>/dev/null; then
  systemctl restart libvirtd.service
else
  pid=""
  [ -s /run/libvirtd.pid ] && pid=$(cat /run/libvirtd.pid)
  if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
    pid=$(pgrep -xo libvirtd || true)
  fi
  if [ -n "$pid" ]; then
    kill -TERM "$pid"
    for _ in $(seq 1 600); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      # Never leave the machine without a daemon: a hung one is killed.
      echo "restart-libvirtd: libvirtd (pid $pid) did not stop within 60 s; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
    fi
  fi
  bash "$here/start-libvirt.sh"
fi
for _ in $(seq 1 150); do
  virsh -c "$uri" list >/dev/null 2>&1 && exit 0
  sleep 0.2
done
echo "restart-libvirtd: virsh list did not answer within 30 s of the restart" >&2
exit 1
