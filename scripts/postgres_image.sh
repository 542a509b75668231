#!/usr/bin/env bash
# A stand-in for the official PostgreSQL image deploy/docker-compose.yml runs
# (docker.io/library/postgres:15-bookworm), made locally where no container registry is
# reachable, so that the compose file runs unchanged. Wherever a registry is reachable, use the
# official image: this one implements only the part of its interface the compose file uses.
#
# A minimal Debian bookworm root (debootstrap --variant=minbase, with postgresql-15) imported
# into podman's store under the official image's name, with scripts/postgres_image_entrypoint.sh
# as /usr/local/bin/docker-entrypoint.sh: POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB make
# the role and the database on the first start, the data lives in /var/lib/postgresql/data (a
# volume), postgres runs as the user postgres and listens on 5432 on every address (password
# authentication, scram-sha-256), pg_isready is on PATH for the healthcheck, SIGINT stops it
# (a fast shutdown), as the official image does.
#
# An image already in the store under that name is kept (the official one too): podman's store
# is the cache, and a clean machine makes it once (about a minute, depending on the mirror).
# Run as root; needs debootstrap and podman (.ci/run installs both).
#
#   scripts/postgres_image.sh [IMAGE]     (default docker.io/library/postgres:15-bookworm)
#   DEBIAN_MIRROR=http://... scripts/postgres_image.sh
set -euo pipefail
image=${1:-docker.io/library/postgres:15-bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
entrypoint="$(dirname "$0")/postgres_image_entrypoint.sh"

if podman image exists "$image"; then
  exit 0
fi
root=$(mktemp -d /var/tmp/kms-postgres-root.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "postgres_image: debootstrap bookworm with postgresql-15 from $mirror into $root" >&2
debootstrap --variant=minbase --include=postgresql-15,postgresql-client-15 bookworm "$root" \
  "$mirror" >/dev/null
# The cluster the package made on installation is not used: the entrypoint makes one in the
# volume, with the role and database the environment names.
rm -rf "$root"/etc/postgresql/15/main "$root"/var/lib/postgresql/15 \
  "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
install -m 0755 "$entrypoint" "$root"/usr/local/bin/docker-entrypoint.sh
chroot "$root" install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data
tar -C "$root" --numeric-owner -c . \
  | podman import \
      --change 'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV PGDATA=/var/lib/postgresql/data' \
      --change 'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' \
      --change 'CMD ["postgres"]' \
      --change 'STOPSIGNAL SIGINT' \
      --change 'EXPOSE 5432' \
      --change 'VOLUME /var/lib/postgresql/data' \
      --change 'LABEL org.opencontainers.image.description="A stand-in for the official postgres:15-bookworm image (scripts/postgres_image.sh)"' \
      --message "debootstrap bookworm minbase + postgresql-15 (scripts/postgres_image.sh)" - "$image" \
      >/dev/null
echo "postgres_image: imported $image" >&2
