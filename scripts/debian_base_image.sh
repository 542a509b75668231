#!/usr/bin/env bash
# The base image deploy/Dockerfile builds FROM, made locally where no registry is reachable:
# a minimal Debian bookworm root (debootstrap --variant=minbase, with python3, its venv
# module and tini) imported into podman's store under the registry's name, so that the Dockerfile builds
# unchanged. An image already in the store under that name is kept: podman's store is the
# cache, and a clean machine makes it once (about 30 s to a few minutes, depending on the
# mirror). Run as root; needs debootstrap and podman (.ci/run installs both).
#
#   scripts/debian_base_image.sh [IMAGE]     (default docker.io/library/debian:bookworm-slim)
#   DEBIAN_MIRROR=http://... scripts/debian_base_image.sh
set -euo pipefail
image=${1:-docker.io/library/debian:bookworm-slim}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if podman image exists "$image"; then
  exit 0
fi
root=$(mktemp -d /var/tmp/kms-debian-root.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "debian_base_image: debootstrap bookworm from $mirror into $root" >&2
debootstrap --variant=minbase --include=python3,python3-venv,tini bookworm "$root" "$mirror" >/dev/null
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" --numeric-owner -c . \
  | podman import --change 'CMD ["bash"]' \
      --message "debootstrap bookworm minbase + python3 (scripts/debian_base_image.sh)" - "$image" >/dev/null
echo "debian_base_image: imported $image" >&2
