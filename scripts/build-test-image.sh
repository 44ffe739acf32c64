#!/usr/bin/env bash
# Build a local PostgreSQL image for the test fixtures' container path, for machines whose
# Docker cannot pull from a registry. The root file system comes from debootstrap against the
# Debian mirror this machine's apt is configured with, then `docker import`.
#
# Usage: scripts/build-test-image.sh [--rebuild] [TAG]
#   TAG        image tag (default: pgaccess/postgres:15, what the fixtures look for)
#   --rebuild  build even when TAG already exists (by default an existing TAG is reused)
# Environment: PGACCESS_PG_MAJOR (15), PGACCESS_DEBIAN_SUITE (bookworm),
#   PGACCESS_DEBIAN_MIRROR (default: read from apt's configured sources).
# Exit codes: 0 built or already present, 1 build failed, 2 bad usage or missing tools.
# Example: sudo scripts/build-test-image.sh && PGACCESS_TEST_SERVER=container pytest -q
set -euo pipefail

major=${PGACCESS_PG_MAJOR:-15}
suite=${PGACCESS_DEBIAN_SUITE:-bookworm}
tag="pgaccess/postgres:${major}"
rebuild=0
for arg in "$@"; do
  case "$arg" in
    --rebuild) rebuild=1 ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "unknown option: $arg" >&2; exit 2 ;;
    *) tag=$arg ;;
  esac
done

command -v docker >/dev/null || { echo "docker is not installed (apt-get install docker.io)" >&2; exit 2; }
if [ "$rebuild" = 0 ] && docker image inspect "$tag" >/dev/null 2>&1; then
  echo "$tag: already built (pass --rebuild to build it again)"
  exit 0
fi
[ "$(id -u)" = 0 ] || { echo "debootstrap needs root: run as root or with sudo" >&2; exit 2; }
command -v debootstrap >/dev/null || {
  echo "installing debootstrap"; apt-get install -y -qq debootstrap >/dev/null; }

mirror=${PGACCESS_DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
  # apt-get indextargets reads both sources.list and deb822 .sources files.
  mirror=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(COMPONENT) $(IDENTIFIER)' \
    | awk -v s="$suite" '$2 == s && $3 == "main" && $4 == "Packages" {print $1; exit}')
fi
if [ -z "$mirror" ]; then
  echo "no apt source for Debian $suite main is configured on this machine; set" \
       "PGACCESS_DEBIAN_MIRROR to a Debian mirror URL" >&2
  exit 2
fi

root=$(mktemp -d /tmp/pgaccess-rootfs-XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "debootstrap $suite from $mirror (postgresql-$major)"
start=$(date +%s)
if ! debootstrap --variant=minbase --include="postgresql-$major" "$suite" "$root" "$mirror" \
    >"$root.log" 2>&1; then
  tail -n 30 "$root.log" >&2
  rm -f "$root.log"
  exit 1
fi
rm -f "$root.log"
# The package's own cluster and apt's caches are not wanted: the fixtures initdb their own.
rm -rf "$root/var/lib/postgresql/$major/main" "$root/etc/postgresql/$major/main" \
       "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import \
  --change "ENV PATH=/usr/lib/postgresql/$major/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
  --change "LABEL org.pgaccess.postgres-major=$major org.pgaccess.debian-suite=$suite" \
  - "$tag" >/dev/null
echo "$tag: built in $(( $(date +%s) - start )) s"
