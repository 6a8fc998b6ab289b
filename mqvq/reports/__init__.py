"""Tables and figures built from runs."""
