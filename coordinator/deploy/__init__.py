"""Applications, releases and rollouts: the deployment service, manifests, groups
and the pure rollout rules."""
