#!/bin/sh
# autosnap postrm: purge removes the state directory (run history, journals); remove
# keeps it, and /etc/autosnap (a conffile) is dpkg's to handle.
set -e

case "$1" in
purge)
	rm -rf "$DPKG_ROOT/var/lib/autosnap"
	;;
esac
if [ -z "$DPKG_ROOT" ] && [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null || true
fi
exit 0
