"""WebOps deployments (#20): a git repository and branch built and run on a machine of
the fleet as an ordinary Moorage unit, behind the agent's reverse proxy."""
