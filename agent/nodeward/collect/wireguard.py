"""WireGuard devices as frozen values, read over the UAPI socket of userspace
implementations (wireguard-go, boringtun): `/var/run/wireguard/NAME.sock`, `get=1`.

Read-only. Private keys are parsed past and never stored; public keys stay base64 so
they match `wg show` and Calico's node annotations.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import socket
from dataclasses import dataclass
from pathlib import Path

UAPI_DIR = Path("/var/run/wireguard")


class WireGuardError(Exception):
    """A device could not be read; the reason is for a finding or a log line."""


@dataclass(frozen=True)
class WgPeer:
    public_key: str  # base64
    endpoint: str = ""  # "host:port", "" when unknown
    allowed_ips: tuple[str, ...] = ()
    last_handshake: float = 0.0  # seconds since the epoch; 0 = never
    rx_bytes: int = 0
    tx_bytes: int = 0
    persistent_keepalive: int = 0


@dataclass(frozen=True)
class WgDevice:
    name: str
    listen_port: int = 0
    public_key: str = ""  # derived by the kernel path only; UAPI does not report it
    fwmark: int = 0
    peers: tuple[WgPeer, ...] = ()
    source: str = "uapi"  # "uapi" | "netlink"


def _hex_to_b64(text: str) -> str:
    try:
        raw = binascii.unhexlify(text)
    except (binascii.Error, ValueError) as e:
        raise WireGuardError(f"bad key {text[:8]}...: {e}") from None
    if len(raw) != 32:
        raise WireGuardError(f"key of {len(raw)} bytes, expected 32")
    return base64.b64encode(raw).decode()


def parse_uapi(name: str, text: str) -> WgDevice:
    """Parse a `get=1` reply. Raises WireGuardError on errno!=0 or a malformed line."""
    dev: dict = {"listen_port": 0, "fwmark": 0}
    peers: list[dict] = []
    errno: int | None = None
    for n, line in enumerate(text.splitlines(), 1):
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise WireGuardError(f"{name}: line {n} is not key=value: {line[:40]!r}")
        try:
            if key == "private_key":
                continue  # never kept
            if key == "errno":
                errno = int(value)
            elif key == "public_key":
                peers.append({"public_key": _hex_to_b64(value), "allowed_ips": []})
            elif key in ("listen_port", "fwmark") and not peers:
                dev[key] = int(value)
            elif not peers:
                continue  # unknown device-level key: forward compatible
            elif key == "endpoint":
                peers[-1]["endpoint"] = value
            elif key == "allowed_ip":
                peers[-1]["allowed_ips"].append(value)
            elif key == "last_handshake_time_sec":
                peers[-1]["sec"] = int(value)
            elif key == "last_handshake_time_nsec":
                peers[-1]["nsec"] = int(value)
            elif key in ("rx_bytes", "tx_bytes"):
                peers[-1][key] = int(value)
            elif key == "persistent_keepalive_interval":
                peers[-1]["persistent_keepalive"] = int(value)
        except ValueError:
            raise WireGuardError(f"{name}: line {n}: bad value for {key}") from None
    if errno is None:
        raise WireGuardError(f"{name}: reply has no errno line (truncated?)")
    if errno != 0:
        raise WireGuardError(f"{name}: device returned errno={errno}")
    return WgDevice(
        name=name, listen_port=dev["listen_port"], fwmark=dev["fwmark"], source="uapi",
        peers=tuple(
            WgPeer(public_key=p["public_key"], endpoint=p.get("endpoint", ""),
                   allowed_ips=tuple(p["allowed_ips"]),
                   last_handshake=p.get("sec", 0) + p.get("nsec", 0) / 1e9,
                   rx_bytes=p.get("rx_bytes", 0), tx_bytes=p.get("tx_bytes", 0),
                   persistent_keepalive=p.get("persistent_keepalive", 0))
            for p in peers))


def read_uapi(path: str | Path, timeout: float = 2.0) -> WgDevice:
    """Ask one UAPI socket for its configuration."""
    path = Path(path)
    name = path.name.removesuffix(".sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(path))
        s.sendall(b"get=1\n\n")
        buf = b""
        while not buf.endswith(b"\n\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    except OSError as e:
        raise WireGuardError(f"{name}: {path}: {e}") from None
    finally:
        s.close()
    return parse_uapi(name, buf.decode("utf-8", "replace"))


def collect_uapi(directory: str | Path = UAPI_DIR,
                 names: set[str] | None = None) -> tuple[tuple[WgDevice, ...], tuple[str, ...]]:
    """Every userspace device in `directory` (optionally only `names`), and the errors.

    The socket directory is shared by all network namespaces, so `names` lets the caller
    restrict it to the interfaces it sees in its own namespace.
    """
    devices: list[WgDevice] = []
    errors: list[str] = []
    with contextlib.suppress(FileNotFoundError):
        for sock in sorted(Path(directory).glob("*.sock")):
            if names is not None and sock.name.removesuffix(".sock") not in names:
                continue
            try:
                devices.append(read_uapi(sock))
            except WireGuardError as e:
                errors.append(str(e))
    return tuple(devices), tuple(errors)


# -- kernel implementation: generic netlink -------------------------------------------------

def _b64(v: object) -> str:
    return v.decode() if isinstance(v, (bytes, bytearray)) else str(v or "")


def device_from_netlink(msgs: list) -> WgDevice:
    """Fold decoded `wgmsg` dump replies (large devices span several) into one device.
    WGDEVICE_A_PRIVATE_KEY and WGPEER_A_PRESHARED_KEY are never read."""
    name, port, fwmark, pub = "", 0, 0, ""
    peers: dict[str, dict] = {}
    for m in msgs:
        name = m.get_attr("WGDEVICE_A_IFNAME") or name
        port = m.get_attr("WGDEVICE_A_LISTEN_PORT") or port
        fwmark = m.get_attr("WGDEVICE_A_FWMARK") or fwmark
        pub = _b64(m.get_attr("WGDEVICE_A_PUBLIC_KEY")) or pub
        for p in m.get_attr("WGDEVICE_A_PEERS") or []:
            key = _b64(p.get_attr("WGPEER_A_PUBLIC_KEY"))
            d = peers.setdefault(key, {"allowed": []})
            ep = p.get_attr("WGPEER_A_ENDPOINT")
            if ep and ep.get("addr") and ep.get("port"):
                addr = ep["addr"]
                d["endpoint"] = f"[{addr}]:{ep['port']}" if ":" in addr else \
                    f"{addr}:{ep['port']}"
            hs = p.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME")
            if hs:
                d["hs"] = hs.get("tv_sec", 0) + hs.get("tv_nsec", 0) / 1e9
            for k, attr in (("rx", "WGPEER_A_RX_BYTES"), ("tx", "WGPEER_A_TX_BYTES"),
                            ("ka", "WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL")):
                v = p.get_attr(attr)
                if v is not None:
                    d[k] = v
            for a in p.get_attr("WGPEER_A_ALLOWEDIPS") or []:
                if isinstance(a, dict) and a.get("addr"):
                    d["allowed"].append(a["addr"])
    return WgDevice(
        name=name, listen_port=port, fwmark=fwmark, public_key=pub, source="netlink",
        peers=tuple(WgPeer(public_key=k, endpoint=d.get("endpoint", ""),
                           allowed_ips=tuple(d["allowed"]), last_handshake=d.get("hs", 0.0),
                           rx_bytes=d.get("rx", 0), tx_bytes=d.get("tx", 0),
                           persistent_keepalive=d.get("ka", 0))
                    for k, d in peers.items()))


def collect_netlink(names: list[str]) -> tuple[tuple[WgDevice, ...], tuple[str, ...]]:
    """Kernel WireGuard devices by name (interfaces of kind "wireguard" in the snapshot).
    No family registered (module absent) is an error string, not an exception."""
    if not names:
        return (), ()
    try:
        from pyroute2 import WireGuard
    except ImportError as e:  # pragma: no cover - pyroute2 is a dependency
        return (), (f"pyroute2 WireGuard unavailable: {e}",)
    devices: list[WgDevice] = []
    errors: list[str] = []
    try:
        wg = WireGuard()
    except Exception as e:  # genl family lookup fails without the module
        return (), (f"wireguard generic netlink: {type(e).__name__}: {e}",)
    try:
        for n in names:
            try:
                devices.append(device_from_netlink(list(wg.info(n))))
            except Exception as e:  # one device's failure must not hide the others
                errors.append(f"{n}: netlink: {type(e).__name__}: {e}")
    finally:
        wg.close()
    return tuple(devices), tuple(errors)
