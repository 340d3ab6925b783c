"""Pieces several ops share."""
