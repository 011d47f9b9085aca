"""CLM: customer-lifecycle marketing automation.

The domain library. It holds no Prefect imports: flows and tasks wrap it.
"""

__version__ = "0.1.0"
