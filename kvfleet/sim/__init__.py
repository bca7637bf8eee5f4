"""Discrete-event cluster simulator over kvfleet's own policy cores (virtual clock)."""
