#!/usr/bin/env bash
# Managed by the agentops.fleet collection: prepares a Debian host to run the
# Molecule test harness. Idempotent; safe to run as often as you like.
#   - installs Debian's docker.io, debootstrap and openssh-client (the ssh scenario) when missing
#   - starts dockerd when no Docker engine answers (clear error, never a hang)
set -euo pipefail

log() { printf 'setup-host: %s\n' "$*"; }
die() { printf 'setup-host: ERROR: %s\n' "$*" >&2; exit 1; }

need_pkgs=()
command -v dockerd >/dev/null 2>&1 || need_pkgs+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need_pkgs+=(debootstrap)
[ -e /usr/share/keyrings/debian-archive-keyring.gpg ] || need_pkgs+=(debian-archive-keyring)
{ command -v ssh && command -v ssh-keygen; } >/dev/null 2>&1 || need_pkgs+=(openssh-client)

if [ "${#need_pkgs[@]}" -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || die "missing ${need_pkgs[*]}; run 'make setup' as root or install them yourself"
  log "installing ${need_pkgs[*]} from Debian"
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 apt-get update -qq || die "apt-get update failed"
  timeout 900 apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null \
    || die "apt-get install ${need_pkgs[*]} failed"
fi

docker_ok() { timeout 10 docker info >/dev/null 2>&1; }

if docker_ok; then
  log "docker engine is running"
  exit 0
fi

[ "$(id -u)" -eq 0 ] || die "no Docker engine answers and only root can start dockerd"
command -v dockerd >/dev/null 2>&1 || die "dockerd is not installed"

if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  log "starting docker.service"
  systemctl start docker.service || true
fi

if ! docker_ok; then
  log "starting dockerd in the background (log: /var/log/agentops-dockerd.log)"
  nohup dockerd >/var/log/agentops-dockerd.log 2>&1 </dev/null &
  disown || true
fi

deadline=$((SECONDS + ${AGENTOPS_DOCKERD_TIMEOUT:-60}))
until docker_ok; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    tail -n 20 /var/log/agentops-dockerd.log >&2 2>/dev/null || true
    die "dockerd did not answer within ${AGENTOPS_DOCKERD_TIMEOUT:-60}s (see /var/log/agentops-dockerd.log)"
  fi
  sleep 1
done
log "docker engine is running ($(docker version --format '{{.Server.Version}}'))"
