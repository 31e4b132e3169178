#!/usr/bin/env bash
# Managed by the agentops.fleet collection: builds a local systemd test image
# from Debian's packages (no container registry needed) and imports it into
# Docker. Skips the build when the image already exists.
#   usage: build-image.sh SUITE IMAGE [SCRIPT]
#     e.g. build-image.sh bookworm agentops-test/debian12:latest
#          build-image.sh bullseye agentops-test/debian11:latest
#          build-image.sh testing agentops-test/debian-testing:latest sid
# SCRIPT is debootstrap's suite script (default: the one named like SUITE); Debian testing
# bootstraps with the `sid` script. The image's apt sources list SUITE's main component only:
# a suite whose security archive is gone (bullseye-security) is never listed, so apt in a
# prepare step does not fail on it.
set -euo pipefail

suite=${1:?usage: build-image.sh SUITE IMAGE [SCRIPT]}
image=${2:?usage: build-image.sh SUITE IMAGE [SCRIPT]}
script=${3:-}
mirror=${AGENTOPS_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Everything the roles and tests need on a host, so converge needs no network.
packages=systemd,systemd-sysv,dbus,python3,python3-apt,cron,procps,curl,ca-certificates,iproute2,util-linux,passwd,sudo,less

log() { printf 'build-image[%s]: %s\n' "$suite" "$*"; }

if docker image inspect "$image" >/dev/null 2>&1; then
  log "$image exists, skipping (docker rmi $image to rebuild)"
  exit 0
fi

work=$(mktemp -d "/var/tmp/agentops-image-${suite}.XXXXXX")
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"

log "debootstrap $suite into $root"
script_path=()
if [ -n "$script" ]; then
  script_path=("/usr/share/debootstrap/scripts/$script")
  [ -f "${script_path[0]}" ] || { log "ERROR: debootstrap has no script '$script'"; exit 2; }
fi
if ! timeout 1200 debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror" "${script_path[@]}" \
    >"$work/debootstrap.log" 2>&1; then
  tail -n 30 "$work/debootstrap.log" >&2
  [ -f "$root/debootstrap/debootstrap.log" ] && tail -n 30 "$root/debootstrap/debootstrap.log" >&2
  log "ERROR: debootstrap failed"
  exit 1
fi

log "trimming the image for use as a container"
# Main only, no -updates and no -security suite (see the usage note above).
printf 'deb %s %s main\n' "$mirror" "$suite" >"$root/etc/apt/sources.list"
rm -f "$root/etc/apt/sources.list.d/"*.list "$root/etc/apt/sources.list.d/"*.sources
chroot "$root" /bin/sh -es <<'CHROOT'
# Units that make no sense (or hang) inside a container.
for u in systemd-udevd.service systemd-udev-trigger.service systemd-udev-settle.service \
         systemd-firstboot.service systemd-remount-fs.service getty@tty1.service \
         console-getty.service systemd-hwdb-update.service sys-kernel-config.mount \
         sys-kernel-debug.mount sys-kernel-tracing.mount; do
  ln -sf /dev/null "/etc/systemd/system/$u"
done
systemctl set-default multi-user.target >/dev/null 2>&1 || true
# Let systemd know it runs in a container-like environment but keep journald persistent-capable.
echo 'agentops-test' > /etc/hostname
: > /etc/machine-id
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /usr/share/doc/* /usr/share/man/* /usr/share/locale/*
CHROOT

log "importing as $image"
tar -C "$root" -c . | docker import \
  --change 'ENV container=docker' \
  --change 'CMD ["/lib/systemd/systemd"]' \
  - "$image" >/dev/null
log "built $image ($(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}'))"
