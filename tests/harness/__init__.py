"""Harness that starts real components (systemd --user, journald, dockerd) for integration tests."""
