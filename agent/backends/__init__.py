"""Backends run units: systemd over D-Bus, Docker over the Engine API.

Each implements `agent.backends.base.Backend`; the agent picks one per unit through
`agent.backends.base.Registry`. Backends know only their runtime: they never import
the daemon.
"""
