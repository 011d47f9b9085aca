"""Prefect tasks: thin wrappers around clm_core, one per chunk of customers or messages."""

from tasks.secrets import register as _register_secret_source

_register_secret_source()
