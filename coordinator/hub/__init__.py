"""Agent sessions, liveness and the write-behind of what agents report."""
