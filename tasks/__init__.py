"""Prefect tasks: thin wrappers around clm_core, one per chunk of customers or messages."""
