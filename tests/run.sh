#!/usr/bin/env bash
# Run the whole nodeward test suite on a Debian machine, as root, from a clean checkout:
# installs the system packages the lab tests use, a virtualenv with the package and its
# test tools, then lint and pytest. This is README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(python3 python3-venv python3-pip iproute2 iptables nftables ipset conntrack
              wireguard-tools wireguard-go etcd-server procps openssl systemd ca-certificates ruby
              util-linux prometheus nfacct qemu-system-x86 busybox-static kmod rsyslog
              podman buildah runc mmdebstrap systemd-container)
# Each command stands for its package; apt runs only when one is missing.
NEEDED_COMMANDS=(python3 ip iptables-legacy nft ipset conntrack wg wireguard-go etcd ps
                 openssl systemd-analyze ruby setpriv unshare promtool nfacct
                 qemu-system-x86_64 busybox depmod rsyslogd podman buildah runc
                 mmdebstrap systemd-nspawn nsenter)
missing=0
for c in "${NEEDED_COMMANDS[@]}"; do command -v "$c" >/dev/null 2>&1 || missing=1; done
python3 -c 'import venv, ensurepip' 2>/dev/null || missing=1
if [ "$missing" = 1 ]; then
  if [ "$(id -u)" != 0 ]; then echo "tests/run.sh: run as root (apt and network namespaces)" >&2; exit 2; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}" >/dev/null
fi

VENV=${NODEWARD_TEST_VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check -e '.[test]'

"$VENV/bin/ruff" check agent tests bench
if [ $# -gt 0 ] || [ "${NODEWARD_TEST_SPLIT:-1}" = 0 ]; then exec "$VENV/bin/pytest" -q "$@"; fi

# The whole suite: the folders that share nothing with the host's namespaces (a QEMU guest
# booting its own kernel: a core of TCG; Debian trees built and booted in containers) run in a
# second pytest beside the rest, which is mostly waiting on namespaces and timeouts. Their
# report follows the main one; the exit code is the worse of the two.
APART=(tests/realkernel tests/deploy)
apart_dir=$(mktemp -d); apart_pid=""
trap 'kill -INT "$apart_pid" 2>/dev/null || true; wait 2>/dev/null; rm -rf "$apart_dir"' EXIT
"$VENV/bin/pytest" -q -p no:cacheprovider --basetemp="$apart_dir/tmp" "${APART[@]}" \
  >"$apart_dir/log" 2>&1 &
apart_pid=$!
rc=0
"$VENV/bin/pytest" -q "${APART[@]/#/--ignore=}" || rc=$?
apart_rc=0
wait "$apart_pid" || apart_rc=$?
echo
echo "======== ${APART[*]} (run beside the rest): exit $apart_rc ========"
cat "$apart_dir/log"
[ "$rc" != 0 ] && exit "$rc"
exit "$apart_rc"
