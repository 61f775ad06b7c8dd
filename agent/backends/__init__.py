"""Backends run units: systemd over D-Bus, Docker over the Engine API."""
