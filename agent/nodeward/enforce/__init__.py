"""Enforcement: turn findings into the agent's own firewall rules (plan, apply, rollback)."""
