"""Evaluation: accuracy per evaluation set (MQAR recall per setting, ListOps)."""
