"""Evaluation: recall (MQAR) accuracy per setting."""
