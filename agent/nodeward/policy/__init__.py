"""Cluster policy: Calico selectors, the policy model and the cluster-wide audit,
verification from pod namespaces, and policies suggested from what audit mode saw."""
