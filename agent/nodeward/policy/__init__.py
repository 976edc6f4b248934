"""Cluster policy: Calico selectors, the policy model and the cluster-wide audit."""
