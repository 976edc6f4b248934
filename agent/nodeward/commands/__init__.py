"""Subcommands beyond `scan`, one module each (see nodeward.cli.COMMAND_MODULES)."""
