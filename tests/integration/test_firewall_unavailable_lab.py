"""NW206 from the real tools: `nodeward scan` without CAP_NET_ADMIN, in a namespace whose
ruleset holds rules. Real iptables-nft-save and nft then fail with "Permission denied" and
iptables-legacy-save exits 0 printing nothing; that must be the NW206 finding (and exit 1
with --fail-on medium), never "no rules"."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile

import pytest

from nodeward.collect.ruleset import collect_ruleset

pytestmark = pytest.mark.lab

DROP_CAP = ["setpriv", "--bounding-set", "-net_admin", "--inh-caps", "-net_admin", "--"]


def test_scan_without_net_admin_is_nw206(lab):
    if not shutil.which("setpriv"):
        pytest.fail("setpriv (util-linux) missing") if os.environ.get("CI") == "true" else \
            pytest.skip("setpriv missing")
    node = lab.node("node", "10.78.0.1/24")
    lab.sh("iptables-nft", "-A", "INPUT", "-p", "tcp", "--dport", "10250", "-j", "DROP",
           ns=node)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write("node_name: n\nnode_cidrs: [10.78.0.0/24]\n")
    try:
        r = lab.sh(*DROP_CAP, sys.executable, "-m", "nodeward", "--config", f.name, "scan",
                   "--format", "json", "--fail-on", "medium", ns=node, check=False,
                   timeout=60)
        # the collector itself, past the capability check: the tools' own behaviour
        probe = lab.sh(*DROP_CAP, sys.executable, "-c", (
            "from nodeward.collect.ruleset import collect_ruleset\n"
            "try:\n    collect_ruleset()\nexcept Exception as e:\n"
            "    print(type(e).__name__, e)\n"), ns=node, check=False, timeout=60)
    finally:
        os.unlink(f.name)
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    nw206 = [x for x in doc["findings"] if x["id"] == "NW206"]
    assert nw206 and nw206[0]["severity"] == "medium", doc["findings"]
    assert "CAP_NET_ADMIN" in nw206[0]["evidence"]["problems"][0]["reason"]
    assert doc["firewall_evaluated"] is False
    assert probe.stdout.startswith("RulesetUnavailable") and "unreadable" in probe.stdout, \
        probe.stdout + probe.stderr
    # with the capability the same namespace reads fine (the rule is there)

    def run(argv):
        out = lab.sh(*argv, ns=node, check=False)
        return out.stdout if out.returncode == 0 else None

    ok = collect_ruleset(run)
    assert any(r.target == "DROP" for t in ok.tables for c in t.chains.values()
               for r in c.rules)
