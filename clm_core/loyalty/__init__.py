"""Membership and loyalty: the programme file, the points ledger, balances and tiers."""
