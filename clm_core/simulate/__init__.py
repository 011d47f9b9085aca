"""A simulated store with planted message effects, and the truth to check measurement against.

``shoppers`` generates purchases day by day (BG/NBD + Gamma-Gamma) in several worlds that share
their random numbers; ``effects`` reads what messages do to customers; ``store`` runs the loop
(purchases, the lifecycle step, receipts, unsubscribes) and writes the truth apart.
"""
