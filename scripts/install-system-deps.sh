#!/usr/bin/env bash
# Installs the system programs the test suite drives for real: mosquitto (+ clients),
# promtool and prometheus itself (package prometheus: tests/ops/test_prometheus.py scrapes a
# cluster), systemd-analyze (systemd) and chromium (the status page's headless browser test).
# Needs root for apt-get.
set -euo pipefail

declare -A package_for=(
  [mosquitto]=mosquitto
  [mosquitto_pub]=mosquitto-clients
  [mosquitto_rr]=mosquitto-clients
  [promtool]=prometheus
  [prometheus]=prometheus
  [systemd-analyze]=systemd
  [chromium]=chromium
)
# Debian installs mosquitto under /usr/sbin, which may not be on a user's PATH.
export PATH="$PATH:/usr/sbin:/sbin"

missing=()
for cmd in "${!package_for[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${package_for[$cmd]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

mapfile -t packages < <(printf '%s\n' "${missing[@]}" | sort -u)
if [ "$(id -u)" -ne 0 ]; then
  echo "missing system packages: ${packages[*]}" >&2
  echo "install them first, e.g.: sudo apt-get update && sudo apt-get install -y ${packages[*]}" >&2
  exit 1
fi
echo "installing system packages: ${packages[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# --no-install-recommends keeps prometheus from pulling in its web assets and exporters.
apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
# The Debian packages start their own daemons; tests start their own on free ports.
for svc in mosquitto prometheus; do
  if command -v systemctl >/dev/null 2>&1; then systemctl stop "$svc" >/dev/null 2>&1 || true; fi
done
