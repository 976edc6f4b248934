"""The `enforce` config section: who may reach each protected component, and the safety net.
Its keys, defaults and checks are nodeward.settings_table.ENFORCE (docs/settings.md).

    enforce:
      control_plane: [10.0.0.0/24]        # API servers: may reach kubelet 10250 (+ etcd)
      etcd_members: [10.0.0.0/24]         # may reach etcd 2379/2380 (default: control_plane)
      allow:                              # extra sources per catalog component
        kube-apiserver: [192.0.2.0/24]    #   e.g. admin networks, or a pod CIDR on purpose
        kubelet: [10.244.7.0/24]          #   e.g. metrics-server's pods
      api_server: 10.0.0.10:6443          # cut-off check and post-apply health check
      metadata_addresses: [169.254.169.254, fd00:ec2::254]
      metadata_allow: [10.244.3.0/24]     # pod CIDRs that may reach the metadata service
      confirm_timeout: 0                  # seconds; >0: roll back unless healthy in time
      probes: [10.0.0.11:10250]           # more HOST:PORT that must connect after apply
      ipv6: auto                          # IPv6 rules when the node serves IPv6
      log_rate: 10                        # audit log lines per second (counters count all)
"""

from __future__ import annotations

from ..settings_table import ENFORCE, EnforceSettings

__all__ = ["DEFAULT", "EnforceSettings", "parse"]

DEFAULT = EnforceSettings()
parse = ENFORCE.parse
