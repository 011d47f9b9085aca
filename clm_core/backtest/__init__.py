"""Replaying the store's history through the real lifecycle and journey engine (``clm
backtest``): what journeys would have done, day by day, with nothing looking ahead."""
