"""Prefect flows: the lifecycle, dispatch and fit_models runs."""
