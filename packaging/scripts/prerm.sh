#!/bin/sh
# autosnap prerm: stop the daemon before its binary goes away (SIGTERM: running guests
# finish or abort safely, see autosnap.service's TimeoutStopSec).
set -e

if [ "$1" = remove ] && [ -z "$DPKG_ROOT" ] && [ -d /run/systemd/system ]; then
	systemctl stop autosnap.service 'autosnap-snap@*.timer' >/dev/null 2>&1 || true
fi
exit 0
