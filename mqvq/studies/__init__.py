"""Studies: declared ablations (studies/*.toml), planner, resumable multi-worker runner."""
