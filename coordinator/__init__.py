"""moorage-coordinator: desired state, scheduling, APIs, agent hub."""

__version__ = "0.1.0"
