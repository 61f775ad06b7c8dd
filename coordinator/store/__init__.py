"""Persistence behind ports: `ports` says what services need, `sqlite` is today's engine.

Only this package imports a database driver; only `coordinator.app` picks the engine.
"""
