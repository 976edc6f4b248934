"""The metadata (NW204) and pod-bypass (NW203) checks against the kernel's own answer, in
the guest: a cloud node whose NIC is a `dummy` named ens5 (the host kernel has no dummy
module), a pod behind a Calico-style veth, an ssh-like host service, real iptables rules.
The oracle is the kernel: whether the pod's connect completes, whether its SYN to the
metadata address leaves through ens5."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.realkernel

META = ["169.254.169.254", "fd00:ec2::254"]


@pytest.fixture(scope="module")
def cloud(guest):
    return guest.call("tests.realkernel.scenarios:metadata_bypass", timeout=240)


def _agree(phase: dict) -> list:
    """nodeward's NW203/NW204, checked against what the kernel did."""
    nw = phase["nodeward"]
    assert nw["notes"] == [] and nw["node_if"] == ["ens5"]
    found = [tuple(f) for f in nw["findings"]]
    k = phase["kernel"]
    assert [a for i, a, _ in found if i == "NW204"] == k["metadata"]
    assert any(i == "NW203" and p == 22 for i, _, p in found) == k["host_ssh"]
    return found


@pytest.mark.parametrize(("label", "expected"), [
    # nothing filters: pods reach the host's port 22 and both metadata endpoints
    ("open", [("NW203", "10.0.0.5", 22), ("NW204", META[0], 80), ("NW204", META[1], 80)]),
    # DROP rules written for eth0 do not match a node whose NIC is ens5
    ("wrong_nic", [("NW203", "10.0.0.5", 22), ("NW204", META[0], 80),
                   ("NW204", META[1], 80)]),
    # rules that name ens5, and port 22 dropped from pods in INPUT
    ("blocked", []),
])
def test_nodeward_agrees_with_the_kernel(cloud, label, expected):
    assert _agree(cloud["phases"][label]) == expected
