"""Cluster policy: audit (selectors, shadowing), verification from pod namespaces, and
policies suggested from what audit mode saw."""
