#!/usr/bin/env bash
# Build the image from the Dockerfile with Debian's buildah: no Docker engine, no registry.
#
#   scripts/build-image.sh [IMAGE]       (make image; IMAGE defaults to mati2sentinel:<version>)
#
# PYTHON_IMAGE names the base, as the Dockerfile's build argument does. Unset, the base is a
# local stand-in for python:3.11-slim-bookworm, built once and kept: Debian bookworm (minbase)
# with Debian's Python 3.11, and a virtualenv at /usr/local so that /usr/local/bin/python and
# its pip sit where the official image has them. The stand-in carries this machine's CA bundle
# (and a pip.conf that trusts it), as a site's hardened base carries its own CA: pip in the build
# reaches PyPI through whatever TLS-inspecting proxy this machine's trust store expects.
#
# buildah and podman run with the vfs storage driver (no overlay mounts needed) and chroot
# isolation, so the build works in an unprivileged sandbox too. Installs buildah, podman, runc
# and debootstrap with apt when they are missing and we are root. Prints the image's size.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -1)
image=${1:-mati2sentinel:$version}
base=${PYTHON_IMAGE:-localhost/mati2sentinel-base:3.11-bookworm}
suite=bookworm
store=(--storage-driver vfs)

need=(buildah podman runc)
[ -n "${PYTHON_IMAGE:-}" ] || need+=(debootstrap)
missing=()
for tool in "${need[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    install=(apt-get install -y -qq "${missing[@]}")
    ("${install[@]}" >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null 2>&1 && "${install[@]}" >/dev/null 2>&1; }) || true
fi
for tool in "${need[@]}"; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "build-image: $tool is missing; install Debian's packages: apt-get install ${need[*]}" >&2
        exit 1
    fi
done

# The Debian mirror apt already uses (deb822 or one-line sources), else Debian's own.
mirror() {
    local uri
    uri=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null |
        grep -v security | head -1 || true)
    [ -n "$uri" ] || uri=$(awk '$1 == "deb" && $0 !~ /security/ {print $2; exit}' \
        /etc/apt/sources.list 2>/dev/null || true)
    echo "${DEBIAN_MIRROR:-${uri:-http://deb.debian.org/debian}}"
}

build_base() {
    local ctr root
    echo "build-image: building the base $base (Debian $suite, Python 3.11) once" >&2
    ctr=$(buildah "${store[@]}" from scratch)
    root=$(buildah "${store[@]}" mount "$ctr")
    # shellcheck disable=SC2064  # the values are fixed now, on purpose
    trap "umount '$root/proc' 2>/dev/null || true; buildah ${store[*]} rm '$ctr' >/dev/null 2>&1 || true" EXIT
    log=$(mktemp)
    debootstrap --variant=minbase \
        --include=python3.11,python3.11-venv,python3-distutils,python3-setuptools,ca-certificates \
        "$suite" "$root" "$(mirror)" >"$log" 2>&1 || { tail -30 "$log" >&2; exit 1; }
    rm -f "$log"
    mount -t proc proc "$root/proc"
    chroot "$root" python3.11 -m venv /usr/local
    umount "$root/proc"
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$root/etc/pip.conf"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    buildah "${store[@]}" config --env LANG=C.UTF-8 \
        --env PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin \
        --cmd python3 "$ctr"
    buildah "${store[@]}" commit --quiet "$ctr" "$base" >/dev/null
    buildah "${store[@]}" rm "$ctr" >/dev/null
    trap - EXIT
}

if [ -z "${PYTHON_IMAGE:-}" ] && ! buildah "${store[@]}" inspect --type image "$base" >/dev/null 2>&1; then
    build_base
fi

# What the image is built from: the build context (.dockerignore's allow-list), the Dockerfile
# and the base. An image labelled with the same digest is up to date, and not built again.
context=$({
    echo "$base"
    buildah "${store[@]}" inspect --type image --format '{{.FromImageID}}' "$base" 2>/dev/null || true
    find Dockerfile .dockerignore pyproject.toml README.md shared services -type f \
        -not -path '*/__pycache__/*' -not -name '*.py[cod]' -print0 | sort -z | xargs -0 sha256sum
} | sha256sum | cut -c1-16)
label=io.mati2sentinel.context
built=$(buildah "${store[@]}" inspect --type image \
    --format "{{index .OCIv1.Config.Labels \"$label\"}}" "$image" 2>/dev/null || true)
if [ "$built" != "$context" ]; then
    # --layers keeps each step's result, so a change to the sources rebuilds only from there.
    buildah "${store[@]}" bud --quiet --layers --isolation chroot --network host \
        --label "$label=$context" --build-arg "PYTHON_IMAGE=$base" -t "$image" . >/dev/null
fi
size=$(podman "${store[@]}" image inspect --format '{{.Size}}' "$image")
echo "build-image: $image, $((size / 1000 / 1000)) MB"
