"""Every setting nodeward reads, in one table: name, kind (type and check), default, a
one-line doc, and for the keys the cluster can supply, which Derived field supplies them.

The settings dataclasses (Config, EnforceSettings, ClusterSettings, DaemonSettings,
SinkSettings, ProbeSettings, VerifySettings, Suppression) are generated from this table and
filled by one parser (settings_schema.Section.parse); docs/settings.md is rendered from it
(`nodeward config keys --markdown`). A key is added here, and only here.
"""

from __future__ import annotations

import ipaddress
from dataclasses import field
from typing import Any
from urllib.parse import urlparse

from . import catalog as catalog_mod
from .settings_schema import (
    AutoBool,
    Bool,
    Choice,
    Cidr,
    ConfigError,
    Custom,
    Glob,
    HostPort,
    Ip,
    Key,
    ListOf,
    MapOf,
    Name,
    NodeName,
    Num,
    PortNumber,
    PortSpec,
    Section,
    Str,
    Url,
    dataclass_of,
)

#: Interfaces that face pods in the common CNIs (Calico, flannel, Cilium, Weave, Docker,
#: bridge/ptp CNI, kube-router, Antrea, OVN).
DEFAULT_POD_INTERFACES = (
    "cali*", "cni0", "cni-podman*", "flannel.*", "flannel-wg", "vxlan.calico",
    "vxlan-v6.calico", "tunl0", "wireguard.cali", "wg-v6.cali", "cilium_*", "lxc*",
    "docker0", "br-*", "veth*", "weave", "vethwe*", "kube-bridge", "antrea-gw0", "ovn-k8s-*",
)
MODES = ("report", "audit", "enforce")
BACKENDS = ("auto", "iptables", "nftables", "python-iptables")
ENCRYPTION_MODES = ("wireguard", "ipsec", "none")

#: List caps: far above any real config, far below what makes a rule set explode (each
#: interface pattern or CIDR is a rule or two per family and protected port).
CIDRS, FEW, PORTS, RULES, NODES = 4096, 16, 64, 1024, 5000

SECONDS = "of seconds"


# -- kinds whose meaning another module owns ------------------------------------------------


def _finding_id(value: Any, where: str) -> str:
    from .findings import registry

    if not isinstance(value, str):
        raise ConfigError(f"{where}: required (a finding ID such as NW101)")
    if value not in registry():
        raise ConfigError(f"{where}: unknown finding ID {value!r} "
                          "(`nodeward explain --all` lists them)")
    return value


def _reason(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: required: say why this finding is accepted")
    return value.strip()


class _CatalogEntries(ListOf):
    """Entries merged into the shipped catalog, field by field by name
    (catalog.Catalog.from_entries; each entry is catalog.ENTRY)."""

    def __init__(self) -> None:
        super().__init__(catalog_mod.ENTRY, 1000, "expected a list of components")

    def parse(self, value: Any, where: str) -> catalog_mod.Catalog:
        if isinstance(value, list) and len(value) > self.cap:
            raise ConfigError(f"{where}: {len(value)} entries, more than the limit of "
                              f"{self.cap}")
        try:
            return catalog_mod.Catalog.from_entries(value, where, catalog_mod.load_default())
        except catalog_mod.CatalogError as e:
            raise ConfigError(str(e)) from None

    def show(self, value: Any) -> Any:
        return f"{len(value.components)} components"


def _peer_node(kw: dict) -> Any:
    from .checks.encryption import PeerNode

    return PeerNode(**kw)


def _matches(self: Any, finding_id: str, port: int | None, component: str) -> bool:
    return (self.id == finding_id
            and (self.port is None or self.port == port)
            and (self.component is None or self.component == component))


def _etcd_sources(self: Any) -> tuple:
    return self.control_plane if self.etcd_members is None else self.etcd_members


def _cidrs(cap: int = CIDRS) -> ListOf:
    return ListOf(Cidr(), cap)


def _sub(name: str, section: Section, doc: str) -> Key:
    return Key(name, section, section.default, doc)


# -- the table ------------------------------------------------------------------------------

SUPPRESSION = Section("Suppression", [
    Key("id", Custom(_finding_id, "a finding ID", ("nw101", 5)), doc="a finding ID such as NW101",
        required=True, missing="required (a finding ID such as NW101)"),
    Key("reason", Custom(_reason, "text", (5,)), doc="why this finding is accepted",
        required=True, missing="required: say why this finding is accepted"),
    Key("port", PortNumber(), None, "only on this port"),
    Key("component", Str(), None, "only for this catalog component"),
], "An accepted finding.", expected="expected a mapping with id and reason",
    methods={"matches": _matches})

ENFORCE = Section("EnforceSettings", [
    Key("control_plane", _cidrs(RULES), (), "API servers: may reach the kubelet (10250) and "
        "etcd", derived="control_plane",
        derived_from="addresses of nodes labelled node-role.kubernetes.io/control-plane"),
    Key("etcd_members", _cidrs(RULES), None, "may reach etcd 2379/2380",
        default_doc="control_plane", derived="etcd_members",
        derived_from="the control-plane nodes (kubeadm stacked etcd)"),
    Key("allow", MapOf(Name(), _cidrs(RULES), 256,
                       "expected a mapping of component name to CIDRs"), {},
        "extra sources per catalog component (admin networks, a pod CIDR on purpose)"),
    Key("api_server", HostPort(), None, "the API server: cut-off check before apply and "
        "health check after"),
    Key("metadata_addresses", ListOf(Ip(), FEW),
        (ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")),
        "cloud metadata service addresses closed to pods"),
    Key("metadata_allow", _cidrs(RULES), (), "pod CIDRs that may reach the metadata service"),
    Key("confirm_timeout", Num(0, 3600, unit=SECONDS), 0.0,
        "> 0: roll back unless the health checks pass within this time"),
    Key("probes", ListOf(HostPort(), PORTS, "expected a list of HOST:PORT"), (),
        "more HOST:PORT that must connect after apply"),
    Key("ipv6", AutoBool(), None, "IPv6 rules; false only on purpose (plan/apply then list "
        "every IPv6 path left open and need --allow-open-ipv6)", default_doc="auto"),
    Key("log_rate", Num(1, 10000, integer=True), 10,
        "audit log lines per second (the counters count all)"),
], "Who may reach each protected component, and the safety net (see Enforcement).",
    methods={"etcd_sources": property(_etcd_sources)})

KUBERNETES = Section("kubernetes", [
    Key("api_url", Url(empty=True), "", "API server URL", default_doc="in-cluster"),
    Key("kubeconfig", Str(), "", "kubeconfig file (inline *-data live in memfds)"),
    Key("token_file", Str(), "", "bearer token file", default_doc="the service account's"),
    Key("ca_file", Str(), "", "CA bundle; TLS is always verified",
        default_doc="the service account's"),
    Key("timeout", Num(0.01, 3600, unit=SECONDS), 5.0, "per API request"),
    Key("retries", Num(0, 10, integer=True), 2, "retries of a failed request"),
], "How to reach the Kubernetes API.", build=dict)

PEER = Section("PeerNode", [
    Key("name", Str(), "", "node name", required=True),
    Key("addresses", ListOf(Ip(text=True), FEW), (), "its addresses"),
    Key("pod_cidrs", ListOf(Cidr(text=True), FEW), (), "its pod CIDRs"),
    Key("wireguard_public_key", Str(), "", "its WireGuard public key (base64)"),
    Key("wireguard_public_key_v6", Str(), "", "its IPv6 WireGuard public key"),
], "A peer node.", build=_peer_node)

def _relay_url(value: Any, where: str) -> str:
    """The relay decides enforcement's control-plane sources: only verified TLS to a host,
    nothing a URL could smuggle besides (path, query, user info)."""
    url = value.rstrip("/") if isinstance(value, str) else None
    u = urlparse(url) if url is not None and url.isascii() else None
    try:
        ok = u is not None and u.scheme == "https" and bool(u.hostname) and not (
            u.path or u.query or u.fragment or u.username or u.password) \
            and (u.port is None or u.port > 0) and not any(c in url for c in " \r\n\t")
    except ValueError:  # a port out of range
        ok = False
    if not ok:
        raise ConfigError(f"{where}: expected https://HOST[:PORT] (the relay is only trusted over "
                    "verified TLS)")
    return url


RELAY = Section("RelaySettings", [
    Key("url", Custom(_relay_url, "https://HOST[:PORT]", ("http://relay:5443", 5)), None,
        "the relay's URL (only verified TLS)", required=True,
        missing="expected https://HOST[:PORT]"),
    Key("ca_file", Str(), "", "the CA the relay's certificate is from", default_doc="system CAs"),
    Key("token_file", Str(), "", "the token the relay reviews (TokenReview)",
        default_doc="the service account's"),
], "A nodeward relay (kubernetes/relay): the cluster view is listed and watched from it "
   "and nothing else.", none=True, null_is_none=True)

CLUSTER = Section("ClusterSettings", [
    _sub("kubernetes", KUBERNETES, "how to reach the API"),
    Key("encryption", Choice(ENCRYPTION_MODES), "", "what inter-node links must use",
        default_doc="what the cluster announces", derived="encryption",
        derived_from="FelixConfiguration wireguardEnabled(V6)/ipsecMode, Cilium "
                     "network.cilium.io/wg-pub-key"),
    Key("peers", ListOf(PEER, NODES, "expected a list of {name, addresses, pod_cidrs, ...}"),
        (), "static peer nodes (besides the cluster view's)"),
    Key("offline_dir", Str(), "", "read the cluster from a directory of YAML, not the API"),
    Key("node_name", NodeName(), "", "this node in the cluster", default_doc="node_name"),
    Key("use_api", Bool(), True, "false: static peers only, no API"),
    _sub("relay", RELAY, "read the cluster view from a nodeward relay, not the API server"),
], "Cluster checks; absent: none (a bare machine is not a node of an unknown cluster).",
    none=True, flatten=("kubernetes",),
    methods={"from_dict": classmethod(lambda cls, d: CLUSTER.parse(d, "cluster"))})

SINK = Section("SinkSettings", [
    Key("url", Url(), None, "the collector's http(s) URL (never echoed)", required=True,
        missing="expected an http(s) URL"),
    Key("token_file", Str(), "", "bearer token file"),
    Key("ca_file", Str(), "", "CA bundle", default_doc="system CAs"),
    Key("spool_dir", Str(), "/var/lib/nodeward/spool", "where undelivered batches wait"),
    Key("spool_max_bytes", Num(4096, 1e9, integer=True), 16 * 1024 * 1024, "spool size cap"),
    Key("batch_size", Num(1, 1e9, integer=True), 500, "findings per request"),
    Key("timeout", Num(0.1, 3600, unit=SECONDS), 10.0, "a whole request (a trickling reply "
        "too)"),
    Key("stall_after", Num(0.5, 86400, unit=SECONDS), 600.0,
        "/healthz unhealthy when nothing was delivered this long"),
    Key("max_backoff", Num(0.5, 86400, unit=SECONDS), 60.0, "longest pause between retries"),
], "A central HTTP collector.", none=True, null_is_none=True)

PROBE_PEER = Section("probe peer", [
    Key("name", Str(), "", "node name", required=True),
    Key("addresses", ListOf(Ip(text=True), FEW, "expected a non-empty list of IP addresses",
                            nonempty=True), (), "its addresses", required=True,
        missing="expected a non-empty list of IP addresses"),
], "A node to probe.", build=lambda kw: (kw["name"], kw["addresses"]))

PROBE = Section("ProbeSettings", [
    Key("enabled", Bool(), False, "probe other nodes' ports from this one"),
    Key("ports", ListOf(PortSpec(), PORTS, "expected a list like ['tcp/10250']"),
        (("tcp", 10250), ("tcp", 10255), ("tcp", 2379), ("tcp", 2380), ("tcp", 6443),
         ("tcp", 10257), ("tcp", 10259), ("tcp", 4149)), "ports to probe"),
    Key("timeout", Num(0.05, 60, unit=SECONDS), 1.0, "per connection"),
    Key("max_per_second", Num(0.1, 100000), 20.0, "new connections per second"),
    Key("peers", ListOf(PROBE_PEER, NODES, "expected a list of {name, addresses}"), (),
        "nodes to probe (until the cluster view lists them)"),
    Key("every", Num(1, 1e9, integer=True), 5, "probe every N cycles"),
], "Cross-node verification.")

DAEMON = Section("DaemonSettings", [
    Key("full_report_every", Num(1, 1e9, integer=True), 10,
        "cycles between full reports (every finding re-logged)"),
    _sub("sink", SINK, "optional central HTTP collector"),
    _sub("probe_peers", PROBE, "cross-node verification"),
    Key("policy_report", Bool(), False, "server-side apply a ClusterPolicyReport per node "
        "(needs kubernetes/rbac-policyreport.yaml)"),
], "What `nodeward run` does besides scanning.")

VERIFY = Section("VerifySettings", [
    Key("metadata", ListOf(HostPort("text"), PORTS, "expected a list of HOST:PORT"),
        (("169.254.169.254", 80),), "metadata endpoints pods must not reach"),
    Key("expect_open", ListOf(HostPort("text"), 256, "expected a list of HOST:PORT"), (),
        "every probed pod must connect here"),
    Key("expect_blocked", ListOf(HostPort("text"), 256, "expected a list of HOST:PORT"), (),
        "no probed pod may connect here"),
    Key("max_pods", Num(1, 1000, integer=True), 20, "namespaces probed per run"),
    Key("timeout", Num(0.05, 30, unit=SECONDS), 1.0, "until a connect counts as dropped"),
    Key("rate", Num(0.1, 1000), 20.0, "new connections per second per namespace"),
    Key("max_targets", Num(1, 1024, integer=True), 64, "connections per namespace"),
    Key("ipv6", Bool(), False, "also probe the node's IPv6 addresses"),
], "`nodeward verify` (CLI options override it, lists add to it).")

#: The nested sections, in the order the docs and `known:` list them.
SECTIONS = {"enforce": ENFORCE, "cluster": CLUSTER, "daemon": DAEMON, "verify": VERIFY}

TOP = Section("Config", [
    Key("node_name", NodeName(), "", "node name in every report, log line and API path",
        default_doc="the hostname, lowercased (env NODEWARD_NODE_NAME overrides)"),
    Key("node_cidrs", _cidrs(), (), "node network(s): addresses inside are node-private",
        derived="node_addresses", derived_from="every Node's InternalIP/ExternalIP"),
    Key("pod_cidrs", _cidrs(), (), "pod network(s)", derived="pod_cidrs",
        derived_from="IPPools, Node podCIDRs, BlockAffinities"),
    Key("pod_interfaces", ListOf(Glob(), 256, "expected a list of interface name patterns"),
        DEFAULT_POD_INTERFACES, "glob patterns of pod-facing interfaces"),
    Key("failsafe_ports", ListOf(PortSpec(), PORTS, "expected a list like ['tcp/22']"),
        (("tcp", 22),), "ports enforcement never closes"),
    Key("mode", Choice(MODES), "report", "see Enforcement"),
    Key("backend", Choice(BACKENDS), "auto", "the firewall front-end enforcement writes"),
    Key("suppress", ListOf(SUPPRESSION, 1000,
                           "expected a list of {id, port?, component?, reason}"), (),
        "accepted findings: they leave the exit status and are listed under `suppressed`"),
    Key("catalog", _CatalogEntries(), None,
        "components to add, or to override field by field by name",
        default_doc="the shipped catalog", factory=catalog_mod.load_default),
    Key("interval", Num(1, 86400, unit=SECONDS), 60.0, "daemon scan interval"),
    Key("metrics_address", HostPort("raw", any_port=True), "127.0.0.1:9737",
        "daemon /healthz and /metrics address (port 0: any free port; a restart applies a "
        "change)"),
    Key("firewall", Bool(), True, "evaluate every socket through the live ruleset (NW2xx)"),
    Key("auth_probe", Bool(), True, "probe components' sockets on a local address without "
        "credentials for their authentication evidence"),
    Key("firewall_max_rules", Num(1, 10_000_000, integer=True), 260_000,
        "rules read per scan past which the stage reports itself partial (NW206)"),
    *(_sub(name, section, section.doc) for name, section in SECTIONS.items()),
], "The top level of the config file.", top=True,
    expected="expected a mapping of settings at the top level",
    build=lambda kw: _config(kw))

#: The defaults of each nested section (Config.section of an absent one).
SECTION_DEFAULTS = {name: s.default for name, s in SECTIONS.items()}


def _section(self: Any, key: str) -> Any:
    """The parsed settings of a nested section (see SECTIONS), or its defaults."""
    if key in self.sections:
        return self.sections[key]
    return SECTION_DEFAULTS[key]


def _config_class() -> type:
    keys = [k for k in TOP.keys if k.name not in SECTIONS]
    return dataclass_of("Config", keys, [
        ("sections", Any, field(default_factory=dict)),
        ("source", Any, field(default="<defaults>"))], {"section": _section})


Config = _config_class()
Suppression = SUPPRESSION.cls
EnforceSettings = ENFORCE.cls
ClusterSettings = CLUSTER.cls
RelaySettings = RELAY.cls
SinkSettings = SINK.cls
ProbeSettings = PROBE.cls
DaemonSettings = DAEMON.cls
VerifySettings = VERIFY.cls


def _config(kw: dict[str, Any]) -> Any:
    sections = {k: kw.pop(k) for k in list(kw) if k in SECTIONS}
    return Config(**kw, sections=sections)


def filled_keys() -> list[tuple[str, Key]]:
    """(section name, "" for the top level; Key) of every key the cluster view fills in
    when the config leaves it at its default (nodeward.derive.with_derived)."""
    out = [("", k) for k in TOP.keys if k.derived]
    out += [(name, k) for name, s in SECTIONS.items() for k in s.keys if k.derived]
    return [(s, k) for s, k in out if s != "cluster"]  # encryption: read where it is used

