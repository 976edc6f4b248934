"""The cluster as this node needs to see it: peer nodes (addresses, pod CIDRs) and the
Calico objects that decide host protection. From the Kubernetes API, from an offline
directory of YAML files, or from static config. Read-only; an unusable API is recorded in
`ClusterView.unknown`, never raised, so the scan goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from .. import settings_load
from ..checks.encryption import PeerNode
from ..kubeapi import (
    ApiConfig,
    ApiUnavailable,
    KubeApi,
    NotFound,
    from_kubeconfig,
    in_cluster,
    read_token,
)

log = structlog.get_logger("nodeward.cluster")

ENCRYPTION_MODES = ("wireguard", "ipsec", "none")

#: kind -> (API paths tried in order: Calico CRD shape, then the v3 aggregated API)
CALICO_KINDS = {
    "BlockAffinity": ("/apis/crd.projectcalico.org/v1/blockaffinities",
                      "/apis/projectcalico.org/v3/blockaffinities"),
    "IPPool": ("/apis/crd.projectcalico.org/v1/ippools", "/apis/projectcalico.org/v3/ippools"),
    "HostEndpoint": ("/apis/crd.projectcalico.org/v1/hostendpoints",
                     "/apis/projectcalico.org/v3/hostendpoints"),
    "FelixConfiguration": ("/apis/crd.projectcalico.org/v1/felixconfigurations",
                           "/apis/projectcalico.org/v3/felixconfigurations"),
    "KubeControllersConfiguration": (
        "/apis/crd.projectcalico.org/v1/kubecontrollersconfigurations",
        "/apis/projectcalico.org/v3/kubecontrollersconfigurations"),
    "GlobalNetworkPolicy": ("/apis/crd.projectcalico.org/v1/globalnetworkpolicies",
                            "/apis/projectcalico.org/v3/globalnetworkpolicies"),
}


@dataclass(frozen=True)
class ClusterSettings:
    """Config keys: `kubernetes: {api_url, kubeconfig, token_file, ca_file, timeout,
    retries}`, `encryption`, `peers`, `offline_dir`, `node_name`."""

    api_url: str = ""
    kubeconfig: str = ""
    token_file: str = ""
    ca_file: str = ""
    timeout: float = 5.0
    retries: int = 2
    encryption: str = "none"  # wireguard | ipsec | none: what inter-node links must use
    peers: tuple[PeerNode, ...] = ()
    offline_dir: str = ""
    node_name: str = ""  # default: the snapshot's node name
    use_api: bool = True  # False: static peers only, no cluster

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> ClusterSettings:
        d = dict(d or {})
        k = d.pop("kubernetes", None) or {}
        if not isinstance(k, dict):
            raise ValueError("kubernetes: expected a mapping")
        kw: dict[str, Any] = {}
        for key in ("api_url", "kubeconfig", "token_file", "ca_file"):
            if key in k:
                if not isinstance(k[key], str):
                    raise ValueError(f"kubernetes.{key}: expected a string")
                kw[key] = k.pop(key)
        if "timeout" in k:
            t = k.pop("timeout")
            if isinstance(t, bool) or not isinstance(t, (int, float)) \
                    or not 0 < t <= 3600:  # NaN fails both comparisons
                raise ValueError("kubernetes.timeout: expected seconds, more than 0 and "
                                 "at most 3600")
            kw["timeout"] = float(t)
        if "retries" in k:
            r = k.pop("retries")
            if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r <= 10:
                raise ValueError("kubernetes.retries: expected an integer 0..10")
            kw["retries"] = r
        if k:
            raise ValueError(f"kubernetes.{sorted(k)[0]}: unknown key")
        if "encryption" in d:
            e = d.pop("encryption")
            if e not in ENCRYPTION_MODES:
                raise ValueError(f"encryption: expected one of {'|'.join(ENCRYPTION_MODES)}")
            kw["encryption"] = e
        if "peers" in d:
            kw["peers"] = tuple(_peer(p, i) for i, p in enumerate(d.pop("peers") or []))
        for key in ("offline_dir", "node_name"):
            if key in d:
                if not isinstance(d[key], str):
                    raise ValueError(f"{key}: expected a string")
                kw[key] = d.pop(key)
        if "use_api" in d:
            if not isinstance(d["use_api"], bool):
                raise ValueError("use_api: expected true or false")
            kw["use_api"] = d.pop("use_api")
        if d:
            raise ValueError(f"{sorted(d)[0]}: unknown key")
        return cls(**kw)


def _peer(p: Any, i: int) -> PeerNode:
    if not isinstance(p, dict) or not isinstance(p.get("name"), str):
        raise ValueError(f"peers[{i}].name: expected a string")
    for key in ("addresses", "pod_cidrs"):
        v = p.get(key, [])
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise ValueError(f"peers[{i}].{key}: expected a list of strings")
    extra = set(p) - {"name", "addresses", "pod_cidrs", "wireguard_public_key"}
    if extra:
        raise ValueError(f"peers[{i}].{sorted(extra)[0]}: unknown key")
    return PeerNode(p["name"], tuple(p.get("addresses", [])), tuple(p.get("pod_cidrs", [])),
                    p.get("wireguard_public_key", ""))


@dataclass(frozen=True)
class ClusterView:
    node: str
    source: str  # "api" | "offline" | "config"
    nodes: tuple[PeerNode, ...] = ()  # every node, this one included
    objects: dict[str, tuple[dict, ...]] = field(default_factory=dict, compare=False,
                                                 hash=False)  # Calico kind -> objects
    unknown: tuple[str, ...] = ()  # reasons parts of the view could not be read
    calico_present: bool = False

    @property
    def peers(self) -> tuple[PeerNode, ...]:
        return tuple(n for n in self.nodes if n.name != self.node)

    def kind(self, kind: str) -> tuple[dict, ...]:
        return self.objects.get(kind, ())


def _node_from_obj(obj: dict, affinities: list[dict]) -> PeerNode:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    name = meta.get("name", "")
    addrs = tuple(a.get("address", "") for a in (obj.get("status") or {}).get("addresses") or []
                  if a.get("type") == "InternalIP")
    cidrs = list(spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else []))
    for aff in affinities:
        s = aff.get("spec") or {}
        if s.get("node") == name and s.get("state", "confirmed") == "confirmed" \
                and s.get("cidr") and s["cidr"] not in cidrs:
            cidrs.append(s["cidr"])
    ann = meta.get("annotations") or {}
    return PeerNode(name, addrs, tuple(cidrs),
                    ann.get("projectcalico.org/WireguardPublicKey", ""))


def build_view(node: str, source: str, node_objs: list[dict], objects: dict[str, list[dict]],
               unknown: list[str], calico_present: bool) -> ClusterView:
    aff = objects.get("BlockAffinity", [])
    return ClusterView(node=node, source=source,
                       nodes=tuple(_node_from_obj(n, aff) for n in node_objs),
                       objects={k: tuple(v) for k, v in objects.items()},
                       unknown=tuple(unknown), calico_present=calico_present)


def api_config(settings: ClusterSettings) -> ApiConfig:
    kw = {"connect_timeout": settings.timeout, "read_timeout": settings.timeout,
          "retries": settings.retries}
    if settings.api_url:
        token = ""
        if settings.token_file:
            token = read_token(settings.token_file, f"token_file {settings.token_file}")
        return ApiConfig(url=settings.api_url.rstrip("/"), token=token,
                         ca_file=settings.ca_file, **kw)
    if settings.kubeconfig:
        return from_kubeconfig(settings.kubeconfig, **kw)
    return in_cluster(**kw)


def from_api(node: str, api: KubeApi) -> ClusterView:
    """Nodes first (no nodes = unknown); Calico kinds each on their own, 404 = not served."""
    unknown: list[str] = []
    try:
        node_objs = list(api.list("/api/v1/nodes"))
    except ApiUnavailable as e:
        log.error("cluster_state_unknown", reason=e.reason, url=api.cfg.url)
        return ClusterView(node=node, source="api", unknown=(e.reason,))
    objects: dict[str, list[dict]] = {}
    calico = False
    for kind, paths in CALICO_KINDS.items():
        for path in paths:
            try:
                objects[kind] = list(api.list(path))
                calico = True
                break
            except NotFound:
                continue
            except ApiUnavailable as e:
                log.error("cluster_state_unknown", reason=e.reason, kind=kind, url=api.cfg.url)
                unknown.append(e.reason)
                break
    return build_view(node, "api", node_objs, objects, unknown, calico)


def load_offline(node: str, directory: str | Path) -> ClusterView:
    """Every *.yaml/*.yml/*.json in `directory`: multi-document, List kinds unrolled."""
    node_objs: list[dict] = []
    objects: dict[str, list[dict]] = {}
    unknown: list[str] = []
    files = sorted(p for p in Path(directory).glob("*") if p.suffix in (".yaml", ".yml", ".json"))
    if not files:
        unknown.append(f"offline dir {directory}: no YAML files")

    def add(obj: Any, where: str) -> None:
        if not isinstance(obj, dict):
            return
        kind = obj.get("kind") if isinstance(obj.get("kind"), str) else ""
        if kind.endswith("List") and isinstance(obj.get("items"), list):
            for item in obj["items"]:
                if isinstance(item, dict) and "kind" not in item and kind != "List":
                    item = {**item, "kind": kind.removesuffix("List")}
                add(item, where)
        elif kind == "Node":
            node_objs.append(obj)
        elif kind:
            objects.setdefault(kind, []).append(obj)

    for path in files:
        try:
            # API dumps of a large cluster: bigger limits than a config, still bounded
            for doc in settings_load.load_file(str(path), f"offline file {path}", multi=True,
                                               max_bytes=256 << 20, max_nodes=50_000_000):
                add(doc, str(path))
        except (OSError, settings_load.SettingsError) as e:
            reason = f"offline file {path}: {type(e).__name__}: {e}".splitlines()[0]
            log.error("cluster_state_unknown", reason=reason)
            unknown.append(reason)
    calico = any(k in objects for k in CALICO_KINDS)
    return build_view(node, "offline", node_objs, objects, unknown, calico)


def collect_cluster(settings: ClusterSettings, node: str) -> ClusterView:
    """The entry point: offline dir, else the API (unless disabled), else static peers.
    Static `peers` are merged in when the API has not listed a node of that name."""
    node = settings.node_name or node
    if settings.offline_dir:
        view = load_offline(node, settings.offline_dir)
    elif settings.use_api:
        try:
            api = KubeApi(api_config(settings))
        except ApiUnavailable as e:
            log.error("cluster_state_unknown", reason=e.reason)
            view = ClusterView(node=node, source="api", unknown=(e.reason,))
        else:
            try:
                view = from_api(node, api)
            finally:
                api.close()
    else:
        view = ClusterView(node=node, source="config")
    if settings.peers:
        listed = {n.name for n in view.nodes}
        extra = tuple(p for p in settings.peers if p.name not in listed)
        view = ClusterView(node=view.node, source=view.source, nodes=view.nodes + extra,
                           objects=view.objects, unknown=view.unknown,
                           calico_present=view.calico_present)
    return view
