#!/usr/bin/env bash
# Control plane: kubeadm init on the private network, Calico by the Tigera operator with
# WireGuard encryption on. The workers join with the bootstrap token from the Vagrantfile.
set -euo pipefail
export KUBECONFIG=/etc/kubernetes/admin.conf

if [ ! -f /etc/kubernetes/admin.conf ]; then
  kubeadm init --apiserver-advertise-address "${CONTROL_PLANE_IP}" \
    --pod-network-cidr "${POD_CIDR}" --node-name "$(hostname)" \
    --token "${KUBEADM_TOKEN}" --token-ttl 0
fi
install -d -m 0700 -o vagrant -g vagrant /home/vagrant/.kube
install -m 0600 -o vagrant -g vagrant /etc/kubernetes/admin.conf /home/vagrant/.kube/config

base="https://raw.githubusercontent.com/projectcalico/calico/${CALICO_VERSION}/manifests"
kubectl create -f "${base}/tigera-operator.yaml" 2>/dev/null || true
kubectl wait --for=condition=Established --timeout=120s crd/installations.operator.tigera.io
kubectl apply -f - <<YAML
apiVersion: operator.tigera.io/v1
kind: Installation
metadata:
  name: default
spec:
  calicoNetwork:
    nodeAddressAutodetectionV4:
      cidrs: ["${CONTROL_PLANE_IP%.*}.0/24"]
    ipPools:
      - name: default-ipv4-ippool
        cidr: ${POD_CIDR}
        encapsulation: VXLANCrossSubnet
        natOutgoing: Enabled
        nodeSelector: all()
---
apiVersion: operator.tigera.io/v1
kind: APIServer
metadata:
  name: default
spec: {}
YAML

# WireGuard: a Felix setting. Calico creates FelixConfiguration "default" once it runs;
# patch it as Calico's WireGuard guide does.
for _ in $(seq 120); do
  kubectl get felixconfiguration.crd.projectcalico.org default >/dev/null 2>&1 && break
  sleep 5
done
kubectl patch felixconfiguration.crd.projectcalico.org default --type merge \
  -p '{"spec": {"wireguardEnabled": true}}'
kubectl get felixconfiguration.crd.projectcalico.org default -o jsonpath='{.spec.wireguardEnabled}'
echo " <- wireguardEnabled"
