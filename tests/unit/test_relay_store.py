"""The relay's store on its own: projections equal to what is stored make no event, a
version from another relay process or older than the kept history is Expired (the server
answers 410 and the agent lists again), and an upstream re-list becomes exactly the
differences."""

from __future__ import annotations

import json

import pytest

from nodeward.relay.store import Expired, RelayStore


def n(name: str, key: str) -> dict:
    return {"kind": "Node", "metadata": {"name": name, "annotations": {"k": key}}}


def events(store: RelayStore, since: int) -> list[tuple[str, str, str]]:
    ks = store.kinds["Node"]
    out = []
    for _n, line in store.after(ks, since):
        e = json.loads(line)
        out.append((e["type"], e["object"]["metadata"]["name"],
                    (e["object"]["metadata"].get("annotations") or {}).get("k", "")))
    return out


def test_unchanged_projection_makes_no_event_and_versions_are_this_relays():
    s = RelayStore(["Node"])
    s.listed("Node", "/api/v1/nodes", {"/a": n("a", "1")})
    start = s.parse(s.items(s.kinds["Node"])[0])
    s.changed("Node", "/a", n("a", "1"))  # a heartbeat: same projection
    assert events(s, start) == [] and s.stats.unchanged == 1
    s.changed("Node", "/a", n("a", "2"))
    s.changed("Node", "/b", n("b", "1"))
    s.changed("Node", "/b", None)
    assert events(s, start) == [("MODIFIED", "a", "2"), ("ADDED", "b", "1"),
                                ("DELETED", "b", "1")]
    version, items = s.items(s.kinds["Node"])
    (item,) = [json.loads(i) for i in items]
    assert item["metadata"]["resourceVersion"].startswith(s.epoch + ".")
    other = RelayStore(["Node"])  # a restarted relay, or the other replica
    with pytest.raises(Expired):
        other.parse(version)
    for bad in ("", "0", "123", f"{s.epoch}.x"):
        with pytest.raises(Expired):
            s.parse(bad)


def test_history_bounds_and_relist_diff():
    s = RelayStore(["Node"], history=3)
    s.listed("Node", "/api/v1/nodes", {"/a": n("a", "0"), "/b": n("b", "0")})
    start = s.parse(s.items(s.kinds["Node"])[0])
    for i in range(1, 5):
        s.changed("Node", "/a", n("a", str(i)))
    with pytest.raises(Expired):  # 4 events since, 3 kept
        s.after(s.kinds["Node"], start)
    mid = s.kinds["Node"].oldest
    assert [k for _t, _n, k in events(s, mid)] == ["2", "3", "4"]
    # upstream 410 -> re-list: b gone, c new, a unchanged -> exactly two events
    now = s.now()
    s.listed("Node", "/api/v1/nodes", {"/a": n("a", "4"), "/c": n("c", "0")})
    assert events(s, now) == [("DELETED", "b", "0"), ("ADDED", "c", "0")]
    assert s.stats.relists == 1
