"""Authentication evidence per listening socket, from what the node shows (read-only).

Two sources, both optional and both named in the evidence:

- the process itself: its command-line flags (already redacted: the flags read here name
  modes, files and URLs, never secrets), the config files they name (kubelet/kube-proxy
  `--config`), read through /proc/PID/root so a containerised static pod's files are
  found, and for etcd its ETCD_* environment (only the variables read here are kept);
- a harmless loopback probe of the socket: a TLS handshake without a client certificate,
  then one unauthenticated GET of the catalog's read-only `probe_path`. Only the status
  code and whether a body came back are kept; the body is discarded unread. Nothing that
  changes state is sent. A daemon passes a ProbeCache so a socket is probed at most once
  per `ProbeCache.every` seconds (and again when its process changes).

A probe answer beats a flag (it is what the socket does), a flag beats nothing, and nothing
is "unknown": the checks word a finding by the state, never by the catalog's default.
"""

from __future__ import annotations

import http.client
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..catalog import Catalog, Component
from ..model import AUTH_NONE, AUTH_REQUIRED, AUTH_UNKNOWN, AuthEvidence, Socket
from ..redact import redact_text

#: Go (pflag) boolean flags: a bare `--flag` is true and the next word is not its value.
BOOL_FLAGS = frozenset({"client-cert-auth", "peer-client-cert-auth", "anonymous-auth",
                        "enable-v2", "auto-tls", "peer-auto-tls"})
#: etcd reads every flag from ETCD_<NAME> too; only these are read from /proc/PID/environ.
ETCD_ENV = ("listen-client-urls", "listen-peer-urls", "listen-metrics-urls", "client-cert-auth",
            "peer-client-cert-auth", "cert-file", "trusted-ca-file", "peer-cert-file",
            "peer-trusted-ca-file", "auto-tls", "peer-auto-tls")
MAX_CONFIG_BYTES = 1 << 20


def parse_flags(argv: Iterable[str]) -> dict[str, str]:
    """`--name=value`, `--name value`, `-name value`, bare booleans; the last one wins."""
    out: dict[str, str] = {}
    args = list(argv)[1:]
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("-") or arg in ("-", "--"):
            continue
        name, eq, value = arg.lstrip("-").partition("=")
        if not eq:
            nxt = args[i] if i < len(args) else None
            if name in BOOL_FLAGS or nxt is None or nxt.startswith("-"):
                value = "true"
            else:
                value, i = nxt, i + 1
        out[name] = value
    return out


def read_in_root(pid: int, path: str, proc: str = "/proc") -> tuple[str | None, str]:
    """A file as the process sees it (its mount namespace, its cwd), and a note on why not."""
    where = f"{proc}/{pid}/root{path}" if path.startswith("/") else f"{proc}/{pid}/cwd/{path}"
    try:
        with open(where, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        return None, f"cannot read {path} of pid {pid}: {e.strerror}"
    if len(data) > MAX_CONFIG_BYTES:
        return None, f"{path} of pid {pid} is larger than {MAX_CONFIG_BYTES} bytes"
    return data.decode("utf-8", "replace"), ""


def yaml_lookup(text: str, dotted: str) -> tuple[str, int] | None:
    """(scalar value, 1-based line) at a dotted key path of a YAML document, or None."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    for key in dotted.split("."):
        if not isinstance(node, yaml.MappingNode):
            return None
        node = next((v for k, v in node.value
                     if isinstance(k, yaml.ScalarNode) and k.value == key), None)
        if node is None:
            return None
    if not isinstance(node, yaml.ScalarNode):
        return None
    return node.value, node.start_mark.line + 1


def read_environ(pid: int, names: Iterable[str], proc: str = "/proc") -> dict[str, str]:
    """Only the named variables of /proc/PID/environ (needs the same uid, or root)."""
    wanted = set(names)
    try:
        with open(f"{proc}/{pid}/environ", "rb") as f:
            data = f.read(MAX_CONFIG_BYTES)
    except OSError:
        return {}
    out = {}
    for item in data.split(b"\0"):
        k, eq, v = item.decode("utf-8", "replace").partition("=")
        if eq and k in wanted:
            out[k] = redact_text(v)
    return out


@dataclass
class Context:
    """What a rule may look at for one socket."""

    sock: Socket
    component: str
    flags: dict[str, str]
    pid: int
    proc: str = "/proc"
    settings: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: (pid, path) -> (text, note), shared across one scan: a kubelet has several sockets
    files: dict[tuple[int, str], tuple[str | None, str]] = field(default_factory=dict)

    def flag(self, name: str) -> str | None:
        """A flag's value, recorded in the evidence when present."""
        value = self.flags.get(name)
        if value is not None:
            self.settings[f"--{name}"] = value
        return value

    def config(self, path: str, key: str) -> tuple[str, str] | None:
        """(value, "<file>:<line> <key>") from the YAML config file at `path`."""
        hit = self.files.get((self.pid, path))
        if hit is None:
            hit = self.files[(self.pid, path)] = read_in_root(self.pid, path, self.proc)
        text, note = hit
        if text is None:
            self.notes.append(note)
            return None
        hit = yaml_lookup(text, key)
        if hit is None:
            return None
        value, line = hit
        where = f"{path}:{line} {key}"
        self.settings[where] = value
        return value, where


Verdict = tuple[str, str]  # (state, decided_by)
UNKNOWN: Verdict = (AUTH_UNKNOWN, "")


def _true(value: str | None) -> bool | None:
    if value is None:
        return None
    return value.strip().lower() in ("true", "1", "yes", "t")


def rule_kubelet(ctx: Context) -> Verdict:
    """Flags override the --config file (as in the kubelet)."""
    anon, anon_at = ctx.flag("anonymous-auth"), "--anonymous-auth"
    mode, mode_at = ctx.flag("authorization-mode"), "--authorization-mode"
    cfg = ctx.flag("config")
    if cfg:
        if anon is None and (hit := ctx.config(cfg, "authentication.anonymous.enabled")):
            anon, anon_at = hit
        if mode is None and (hit := ctx.config(cfg, "authorization.mode")):
            mode, mode_at = hit
    if _true(anon) is False:
        return AUTH_REQUIRED, f"{anon_at}={anon}: anonymous requests are refused"
    if _true(anon) and mode is not None and mode.strip() == "AlwaysAllow":
        return AUTH_NONE, (f"{anon_at}={anon} and {mode_at}={mode}: anyone may use the "
                           "kubelet API")
    return UNKNOWN


def rule_kubelet_readonly(ctx: Context) -> Verdict:
    port = ctx.flag("read-only-port")
    where = "--read-only-port"
    cfg = ctx.flag("config")
    if port is None and cfg and (hit := ctx.config(cfg, "readOnlyPort")):
        port, where = hit
    what = f" ({where}={port})" if port is not None else ""
    return AUTH_NONE, f"the kubelet read-only port has no authentication{what}"


def _url_for(urls: str, sock: Socket) -> str | None:
    """The URL of a comma-separated etcd listen list that this socket serves."""
    best = None
    for url in (u.strip() for u in urls.split(",") if u.strip()):
        _scheme, _, rest = url.partition("://")
        hostport = rest.split("/", 1)[0]
        host, _, port = hostport.rpartition(":")
        host = host.strip("[]")
        if port.isdigit() and int(port) != sock.port:
            continue
        if host == sock.address or (host in ("0.0.0.0", "::", "") and
                                     sock.address in ("0.0.0.0", "::")):
            return url
        best = best or url
    return best


def _etcd(ctx: Context, urls_flag: str, cert_auth_flag: str, ca_flag: str,
          cert_flag: str, auto_tls_flag: str) -> Verdict:
    env = read_environ(ctx.pid, [f"ETCD_{n.upper().replace('-', '_')}" for n in ETCD_ENV],
                       ctx.proc)

    def get(name: str) -> tuple[str | None, str]:
        value = ctx.flag(name)
        if value is not None:
            return value, f"--{name}"
        var = f"ETCD_{name.upper().replace('-', '_')}"
        if var in env:
            ctx.settings[f"env {var}"] = env[var]
            return env[var], f"env {var}"
        return None, ""

    urls, urls_at = get(urls_flag)
    url = _url_for(urls, ctx.sock) if urls else None
    cert_auth, cert_auth_at = get(cert_auth_flag)
    ca, _ = get(ca_flag)
    get(cert_flag)  # recorded in the evidence; a server certificate alone decides nothing
    get(auto_tls_flag)
    if url is not None and url.startswith("http://"):
        return AUTH_NONE, (f"{urls_at} {url}: plain HTTP, no TLS and no client "
                           "certificates")
    if url is not None and url.startswith("https://"):
        if _true(cert_auth) and ca:
            return AUTH_REQUIRED, (f"{cert_auth_at}={cert_auth} with --{ca_flag}: client "
                                   "certificates are required")
        if not _true(cert_auth) and not ca:
            return AUTH_NONE, (f"{urls_at} {url} without --{cert_auth_flag} or a trusted "
                               "CA: TLS, but any client is served")
    return UNKNOWN


def rule_etcd_client(ctx: Context) -> Verdict:
    return _etcd(ctx, "listen-client-urls", "client-cert-auth", "trusted-ca-file",
                 "cert-file", "auto-tls")


def rule_etcd_peer(ctx: Context) -> Verdict:
    return _etcd(ctx, "listen-peer-urls", "peer-client-cert-auth", "peer-trusted-ca-file",
                 "peer-cert-file", "peer-auto-tls")


def rule_etcd_metrics(ctx: Context) -> Verdict:
    urls = ctx.flag("listen-metrics-urls")
    url = _url_for(urls, ctx.sock) if urls else None
    if url and url.startswith("http://"):
        return AUTH_NONE, f"--listen-metrics-urls {url}: plain HTTP, no authentication"
    return UNKNOWN


def rule_apiserver(ctx: Context) -> Verdict:
    anon = ctx.flag("anonymous-auth")
    mode = ctx.flag("authorization-mode")
    if _true(anon) is False:
        return AUTH_REQUIRED, f"--anonymous-auth={anon}: anonymous requests are refused"
    if mode is not None and mode.split(",")[0].strip() == "AlwaysAllow":
        return AUTH_NONE, f"--authorization-mode={mode}: anonymous requests are allowed"
    return UNKNOWN


def rule_apiserver_insecure(ctx: Context) -> Verdict:
    port = ctx.flag("insecure-port")
    if port is not None and port.strip() not in ("", "0"):
        return AUTH_NONE, f"--insecure-port={port}: no authentication or authorization"
    return UNKNOWN


def rule_delegated(ctx: Context) -> Verdict:
    """controller-manager, scheduler: delegated authentication through the API server."""
    ctx.flag("bind-address")
    ctx.flag("secure-port")
    kubeconfig = ctx.flag("authentication-kubeconfig")
    if kubeconfig:
        return AUTH_REQUIRED, ("--authentication-kubeconfig set: requests are authenticated "
                               "by the API server (TokenReview)")
    return UNKNOWN


def rule_kube_proxy_metrics(ctx: Context) -> Verdict:
    where = "--metrics-bind-address"
    bind = ctx.flag("metrics-bind-address")
    cfg = ctx.flag("config")
    if bind is None and cfg and (hit := ctx.config(cfg, "metricsBindAddress")):
        bind, where = hit
    what = f" ({where}={bind})" if bind is not None else ""
    return AUTH_NONE, f"kube-proxy serves metrics without authentication{what}"


def rule_never(ctx: Context) -> Verdict:
    return AUTH_NONE, f"{ctx.component} has no authentication option"


RULES: Mapping[str, Callable[[Context], Verdict]] = {
    "kubelet": rule_kubelet,
    "kubelet-readonly": rule_kubelet_readonly,
    "etcd-client": rule_etcd_client,
    "etcd-peer": rule_etcd_peer,
    "etcd-metrics": rule_etcd_metrics,
    "kube-apiserver": rule_apiserver,
    "kube-apiserver-insecure": rule_apiserver_insecure,
    "delegated": rule_delegated,
    "kube-proxy-metrics": rule_kube_proxy_metrics,
    "never": rule_never,
}


# -- the loopback probe ----------------------------------------------------------------------

#: Alerts a server sends when the client gave no certificate (TLS 1.3: certificate_required;
#: Go on TLS 1.2: bad_certificate). Nothing vaguer counts: "required" lowers a severity.
_CERT_REQUIRED = ("CERTIFICATE_REQUIRED", "BAD_CERTIFICATE")


def probe_target(sock: Socket) -> str | None:
    """The local address to reach the socket at: its own, or loopback for a wildcard."""
    if sock.address == "0.0.0.0":
        return "127.0.0.1"
    if sock.address == "::":  # dual-stack takes IPv4 too, even where lo has no ::1
        return "::1" if sock.v6only else "127.0.0.1"
    if sock.address.startswith("fe80"):
        return None  # needs a scope id; not worth it
    return sock.address


def _request(conn: http.client.HTTPConnection, path: str) -> tuple[int, bool]:
    conn.request("GET", path, headers={"User-Agent": "nodeward-auth-probe",
                                       "Accept": "application/json"})
    resp = conn.getresponse()
    body = bool(resp.read(1))  # one byte says "a body came back"; the rest is not read
    return resp.status, body


def probe(host: str, port: int, path: str, timeout: float = 1.0) -> dict[str, Any]:
    """TLS first (no client certificate, no verification: we want the server's answer,
    not its identity), plain HTTP if the server does not speak TLS."""
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    out: dict[str, Any] = {"target": target, "path": path}
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn: http.client.HTTPConnection = http.client.HTTPSConnection(
        host, port, timeout=timeout, context=ctx)
    try:
        try:
            conn.connect()
            out["tls"] = "yes"
            out["status"], out["body"] = _request(conn, path)
            return out
        except ssl.SSLError as e:
            reason = (e.reason or str(e)).upper()
            if any(r in reason for r in _CERT_REQUIRED):
                out["tls"] = "client certificate required"
                out["alert"] = e.reason or "handshake refused"
                return out
            tls_error = e.reason or type(e).__name__  # not TLS, perhaps plain HTTP
        except TimeoutError:
            out["tls"] = "no answer"
            return out
        except (ConnectionError, http.client.HTTPException, OSError) as e:
            if "tls" in out:  # after a TLS handshake, a reset without an alert proves nothing
                out["tls"] = f"{out['tls']}, then {type(e).__name__}"
                return out
            if not isinstance(e, ConnectionResetError):
                out["tls"] = f"failed: {type(e).__name__}"
                return out
            # a reset during the handshake: a plain server that closed on our ClientHello
            # with it unread (etcd's cmux does, one probe in twenty) may well speak HTTP
            tls_error = type(e).__name__
        finally:
            conn.close()
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            out["status"], out["body"] = _request(conn, path)
            out["tls"] = "no"
        except (OSError, http.client.HTTPException) as e:
            out["tls"] = f"failed: {tls_error}"
            out["http"] = f"failed: {type(e).__name__}"
        finally:
            conn.close()
    except Exception as e:  # a probe must never break the scan
        out["error"] = type(e).__name__
    return out


def from_probe(p: Mapping[str, Any]) -> Verdict:
    """What a probe answer proves, if anything."""
    scheme = "https" if p.get("tls") == "yes" else "http"
    what = f"probe: GET {scheme}://{p.get('target')}{p.get('path')} without credentials"
    if p.get("tls") == "client certificate required":
        return AUTH_REQUIRED, (f"probe: TLS handshake with {p.get('target')} without a "
                               f"client certificate refused ({p.get('alert')})")
    status = p.get("status")
    if status == 401:
        return AUTH_REQUIRED, f"{what} -> 401 (authentication required)"
    if status == 403:
        return AUTH_REQUIRED, f"{what} -> 403 (anonymous request denied by authorization)"
    if isinstance(status, int) and 200 <= status < 300 and p.get("body"):
        return AUTH_NONE, f"{what} -> {status} with a body"
    return UNKNOWN


# -- per scan ---------------------------------------------------------------------------------

@dataclass
class ProbeCache:
    """Probe answers a daemon keeps between cycles: the same socket of the same process is
    probed again only after `every` seconds."""

    every: float = 600.0
    entries: dict[tuple, tuple[float, dict[str, Any]]] = field(default_factory=dict)

    def get(self, key: tuple, now: float) -> dict[str, Any] | None:
        hit = self.entries.get(key)
        return hit[1] if hit is not None and now - hit[0] < self.every else None

    def put(self, key: tuple, now: float, result: dict[str, Any]) -> None:
        self.entries[key] = (now, result)

    def keep_only(self, keys: set[tuple]) -> None:
        for k in [k for k in self.entries if k not in keys]:
            del self.entries[k]


def _judged(catalog: Catalog, sock: Socket,
            identities: Mapping[Socket, Any] | None = None) -> Component | None:
    ident = (identities or {}).get(sock) or catalog.identify(sock.protocol, sock.port,
                                                              sock.process)
    comp = ident.component
    if comp is None or ident.unexpected_process or not (comp.auth_rule or comp.probe_path):
        return None
    return comp


def _in_threads(fn: Callable[[Any], dict[str, Any]], args: list[Any],
                workers: int) -> list[dict[str, Any]]:
    """fn over args on up to `workers` threads, answers in order. (Not concurrent.futures:
    it and the logging module it loads cost the daemon 0.7 MB of RSS for this loop.)"""
    answers: list[dict[str, Any]] = [{} for _ in args]
    pending = iter(range(len(args)))
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                i = next(pending, None)
            if i is None:
                return
            try:
                answers[i] = fn(args[i])
            except Exception as e:  # probe() catches its own; a bug must not hang the scan
                answers[i] = {"error": type(e).__name__}

    threads = [threading.Thread(target=work, name="nodeward-probe", daemon=True)
               for _ in range(min(workers, len(args)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


def collect_auth(sockets: Iterable[Socket], catalog: Catalog, *, probe_sockets: bool = True,
                 timeout: float = 1.0, cache: ProbeCache | None = None,
                 proc: str = "/proc", workers: int = 8,
                 identities: Mapping[Socket, Any] | None = None,
                 ) -> tuple[dict[tuple[str, str, int], AuthEvidence], list[str]]:
    """Evidence for every socket of a component with an auth_rule or a probe_path, plus
    collector notes (a config file that could not be read)."""
    judged = [(s, c) for s in sockets
              if (c := _judged(catalog, s, identities)) is not None]
    probes: dict[tuple, dict[str, Any]] = {}
    if probe_sockets:
        now = time.monotonic()
        todo = {}
        for s, c in judged:
            host = probe_target(s) if c.probe_path and s.protocol == "tcp" else None
            if host is None:
                continue
            key = (s.process.pid if s.process else 0, host, s.port, c.probe_path)
            hit = cache.get(key, now) if cache else None
            if hit is not None:
                probes[key] = hit
            else:
                todo[key] = (host, s.port, c.probe_path)
        if todo:
            answers = _in_threads(lambda a: probe(*a, timeout=timeout),
                                  list(todo.values()), workers)
            done = dict(zip(todo, answers, strict=True))
            for key, result in done.items():
                probes[key] = result
                if cache is not None:
                    cache.put(key, now, result)
        if cache is not None:
            cache.keep_only(set(probes))
    out: dict[tuple[str, str, int], AuthEvidence] = {}
    notes: dict[str, None] = {}  # ordered, once each
    files: dict[tuple[int, str], tuple[str | None, str]] = {}
    for s, c in judged:
        ctx = Context(s, c.name, parse_flags(s.process.cmdline) if s.process else {},
                      s.process.pid if s.process else 0, proc, files=files)
        verdict = UNKNOWN
        if c.auth_rule and s.process is not None:
            verdict = RULES[c.auth_rule](ctx)
            notes.update((f"authentication not read from a config file: {n}", None)
                         for n in ctx.notes)
        host = probe_target(s)
        p = probes.get((s.process.pid if s.process else 0, host, s.port, c.probe_path), {})
        seen = from_probe(p) if p else UNKNOWN
        if seen[0] != AUTH_UNKNOWN:
            verdict = seen  # what the socket does beats what its flags say
        out[s.key] = AuthEvidence(state=verdict[0], decided_by=verdict[1],
                                  settings=dict(ctx.settings), probe=dict(p))
    return out, list(notes)

