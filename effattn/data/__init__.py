"""Data sources: generated (MQAR) and local files."""
