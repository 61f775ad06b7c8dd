"""moorctl: the operator's CLI and its HTTP client. It speaks to the coordinator over
HTTP only and imports the contract (proto), never the server or the agent."""

__version__ = "0.1.0"
