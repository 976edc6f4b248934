"""nodeward: host-firewall agent for Kubernetes nodes."""

__version__ = "0.1.0"
