"""`nodeward relay`: one list-then-watch of the API server, fanned out to every agent.

Why: a Node's status is re-posted by its kubelet every 5 minutes (nodeStatusReportFrequency),
so at 5,000 nodes every agent watching Nodes directly receives ~17 whole Node objects
(~7 KB each) a second, none of which changes what the agent checks. The relay watches
the API once (per replica), projects each object to the fields the agents read
(collect.cluster.trim_node / collect.watch.trim_calico), and forwards an event only when
that projection changed. Agents speak the same list/watch protocol to it as to the API
server (collect.watch.ClusterWatcher, `cluster.relay` in the config), over TLS with a CA
they verify; the relay authenticates them by TokenReview of their ServiceAccount token.
Calico built Typha for the same reason.

    store.py   projected objects, the relay's own resourceVersions, event history
    server.py  the HTTPS list/watch endpoint agents read, and the Relay that feeds it
    auth.py    bearer tokens checked by TokenReview, with a short cache
    client.py  the agent side: the `cluster.relay` settings and the ApiConfig they make
"""
