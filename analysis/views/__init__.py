"""Researcher pages of the machine side, one module per area. Thin: selectors read, services write."""
