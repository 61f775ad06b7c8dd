"""Fleet units and machines: the unit service, the pure scheduler, the desired-state
projection and submit-time validation."""
