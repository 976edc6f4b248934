#!/usr/bin/env bash
# Worker: join the control plane with the lab's bootstrap token. The CA is not pinned
# (--discovery-token-unsafe-skip-ca-verification): acceptable on this host-only lab network
# only, never on a real cluster.
set -euo pipefail
if [ -f /etc/kubernetes/kubelet.conf ]; then exit 0; fi
for _ in $(seq 120); do
  curl -ksf "https://${CONTROL_PLANE_IP}:6443/readyz" >/dev/null && break
  sleep 5
done
kubeadm join "${CONTROL_PLANE_IP}:6443" --token "${KUBEADM_TOKEN}" \
  --discovery-token-unsafe-skip-ca-verification --node-name "$(hostname)"
