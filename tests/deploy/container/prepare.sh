#!/bin/sh
# Make this machine able to build and run deploy/docker/Dockerfile with podman, then build it.
#
# For CI machines without a Docker daemon or a reachable image registry (Debian bookworm, root):
#   1. apt-get installs podman, runc and debootstrap when they are missing;
#   2. podman is configured for a rootful, cgroup v1 sandbox in a drop-in file, for each setting
#      that no containers.conf on the machine sets already (nothing existing is overwritten);
#   3. the Dockerfile's base image (python:3.11.x-slim-bookworm) is replaced by a Debian bookworm
#      made here with debootstrap and imported under the same name, with the machine's CA bundle
#      (outbound HTTPS may be intercepted by a proxy with its own CA);
#   4. the image is built with `podman build --format docker` (the OCI format drops HEALTHCHECK)
#      and tagged $IMAGE. A build whose Dockerfile and sources are unchanged is reused.
#
# Exit codes: 0 ready, 77 podman cannot run containers on this machine (the caller skips),
# anything else a real failure.
set -eu

cd "$(dirname "$0")/../../.."
IMAGE=${MLFLOW_BLUEGREEN_IMAGE:-localhost/mlflow-bluegreen:ci}
DOCKERFILE=deploy/docker/Dockerfile
DROP_IN=/etc/containers/containers.conf.d/50-mlflow-bluegreen-ci.conf

skip() {
    echo "container-test SKIPPED: podman cannot run containers here: $*" >&2
    exit 77
}

say() { echo "container-test: $*" >&2; }

# 1. Tools.
missing=""
command -v podman >/dev/null 2>&1 || missing="$missing podman"
command -v runc >/dev/null 2>&1 || missing="$missing runc"
command -v debootstrap >/dev/null 2>&1 || missing="$missing debootstrap"
if [ -n "$missing" ]; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        skip "missing$missing, and apt-get as root is not available to install them"
    fi
    say "installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing uidmap >/dev/null \
        || skip "apt-get could not install$missing"
fi
[ "$(id -u)" = 0 ] || skip "this setup runs podman rootful and needs root"

# 2. Configuration, only what no containers.conf sets yet. crun fails on hybrid cgroups
# ("cgroups in hybrid mode not supported"), systemd is not PID 1 (no systemd cgroup manager, no
# journald), and a sandbox may not let containers raise their ulimits to podman's defaults.
is_set() {
    cat /usr/share/containers/containers.conf /etc/containers/containers.conf \
        /etc/containers/containers.conf.d/*.conf 2>/dev/null \
        | grep -Eq "^[[:space:]]*$1[[:space:]]*="
}
if [ ! -e "$DROP_IN" ]; then
    containers="" engine=""
    is_set default_ulimits \
        || containers='default_ulimits = ["nofile=10000:10000", "nproc=4096:4096"]'
    is_set runtime || engine="${engine}runtime = \"runc\"
"
    is_set cgroup_manager || engine="${engine}cgroup_manager = \"cgroupfs\"
"
    is_set events_logger || engine="${engine}events_logger = \"file\"
"
    if [ -n "$containers$engine" ]; then
        mkdir -p "$(dirname "$DROP_IN")"
        {
            echo "# Written by tests/deploy/container/prepare.sh (mlflow-bluegreen CI)."
            [ -z "$containers" ] || printf '[containers]\n%s\n' "$containers"
            [ -z "$engine" ] || printf '[engine]\n%s' "$engine"
        } >"$DROP_IN"
        say "wrote $DROP_IN"
    fi
fi
podman info >/dev/null 2>&1 || skip "$(podman info 2>&1 | tail -1)"

# 3. The base image, made locally under the name the Dockerfile pulls.
base=$(sed -n 's/^FROM[[:space:]]\{1,\}\([^[:space:]]*\).*/\1/p' "$DOCKERFILE" | sort -u)
[ "$(echo "$base" | wc -l)" = 1 ] || { say "expected one base image, got: $base"; exit 1; }
case "$base" in
    */*) ;;
    *) base="docker.io/library/$base" ;;
esac
if ! podman image exists "$base"; then
    root=$(mktemp -d /var/tmp/mlflow-bluegreen-base.XXXXXX)
    trap 'rm -rf "$root"' EXIT
    say "debootstrap bookworm into $root (about a minute)"
    debootstrap --variant=minbase \
        --include=python3,python3-venv,python-is-python3,ca-certificates \
        bookworm "$root" http://deb.debian.org/debian >"$root.log" 2>&1 \
        || { tail -20 "$root.log" >&2; rm -f "$root.log"; exit 1; }
    rm -f "$root.log"
    # The machine's trust store, so pip and uv reach PyPI through an intercepting proxy.
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
    if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
        cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    fi
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | podman import \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
        --change 'CMD ["python3"]' \
        - "$base" >/dev/null
    rm -rf "$root"
    trap - EXIT
    say "imported $base"
fi
podman run --rm --network host "$base" true 2>/dev/null \
    || skip "$(podman run --rm --network host "$base" true 2>&1 | tail -1)"

# 4. The image. Its tag names a hash of everything the build reads.
sources=$(find proxy worker -type f ! -name '*.py[co]' ! -path '*/__pycache__/*' | LC_ALL=C sort)
# shellcheck disable=SC2086
key=$(cat "$DOCKERFILE" "$DOCKERFILE.dockerignore" pyproject.toml README.md $sources \
    | sha256sum | cut -c1-16)
keyed="localhost/mlflow-bluegreen:src-$key"
if podman image exists "$keyed"; then
    say "reusing $keyed"
else
    say "building $DOCKERFILE (3-4 minutes)"
    podman build --pull=never --format docker --network host \
        -f "$DOCKERFILE" -t "$keyed" . >&2
fi
podman tag "$keyed" "$IMAGE"
say "ready: $IMAGE"
