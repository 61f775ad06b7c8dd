"""What agents report about deployments and units: stickers, drift, logs."""
