// Package packaging holds no code: its directory holds the Debian package's description
// (nfpm.yaml, built by `make deb`), the systemd units (systemd/) and the maintainer
// scripts (scripts/). Its test builds the package, installs it into a scratch root with
// dpkg and checks what landed where (docs/packaging.md).
package packaging
