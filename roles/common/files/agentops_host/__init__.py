"""On-host library of the agentops.fleet collection (standard library only)."""
