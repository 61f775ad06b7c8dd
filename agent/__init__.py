"""moorage-agent: runs units on one machine."""

__version__ = "0.1.0"
