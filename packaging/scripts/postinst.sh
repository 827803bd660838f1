#!/bin/sh
# autosnap postinst: the state directory (run history, merge journals) and systemd's
# view of the new units. Honours $DPKG_ROOT (dpkg --root … --force-script-chrootless).
set -e

case "$1" in
configure)
	install -d -m 0700 "$DPKG_ROOT/var/lib/autosnap"
	# An existing directory keeps its contents but not a looser mode.
	chmod 0700 "$DPKG_ROOT/var/lib/autosnap"
	if [ -z "$DPKG_ROOT" ] && [ -d /run/systemd/system ]; then
		systemctl daemon-reload >/dev/null || true
		# On upgrade a running daemon restarts on the new binary; it is never enabled
		# or started here: that waits for a policy file the admin wrote.
		if [ -n "$2" ]; then
			systemctl try-restart autosnap.service >/dev/null || true
		fi
	fi
	;;
esac
exit 0
