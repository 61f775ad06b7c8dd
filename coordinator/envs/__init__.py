"""Environments, targets, freeze windows and promotions (issue #18)."""
