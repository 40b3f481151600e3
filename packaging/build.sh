#!/bin/sh
# Build lancache's Debian packages (amd64, arm64, armhf), man page and OCI
# image into dist/ at the repository root. Needs only Go (no dpkg, no Docker).
#
#   packaging/build.sh [-version V] [-deb] [-oci] [-out DIR]
#
# See packaging/cmd/lancache-dist for the flags and outputs.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
exec go run ./cmd/lancache-dist -repo "$here/.." -out "$here/../dist" "$@"
