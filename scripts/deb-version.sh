#!/bin/sh
# Prints the Debian package version of this checkout: a release tag vX.Y.Z gives X.Y.Z
# (X.Y.Z+N.gHASH N commits later); without a tag 0.0~gitYYYYMMDDHHMMSS.HASH (the
# commit time in UTC, so versions of later commits sort higher). +dirty marks
# uncommitted changes. Outside a git checkout: 0.0~dev.
set -e
cd "$(dirname "$0")/.."
if ! git rev-parse --verify -q HEAD >/dev/null 2>&1; then
	echo 0.0~dev
	exit 0
fi
if d=$(git describe --tags --match 'v[0-9]*' 2>/dev/null); then
	v=$(echo "${d#v}" | sed -E 's/-([0-9]+)-g([0-9a-f]+)$/+\1.g\2/')
else
	v="0.0~git$(TZ=UTC git log -1 --format=%cd --date=format-local:%Y%m%d%H%M%S).$(git rev-parse --short=12 HEAD)"
fi
if ! git diff --quiet HEAD -- 2>/dev/null; then
	v="$v+dirty"
fi
echo "$v"
