"""Product recommendations: what a customer is likely to buy next, and how well that is known.

- ``model``: the scoring, pure numpy over counts (item popularity, what was bought in the order
  after an order holding an item), shared by the store-backed recommender and the evaluation.
- ``recommender``: ``Recommender``, the counts read from the database with a few SQL queries,
  used by dispatch to fill ``recommendations`` in templates.
- ``catalog``: products, segments and baskets for simulated stores (order items with structure:
  segment tastes, items bought together, repeat purchases).
- ``evaluate``: hit rate at k on each customer's held-out last order, point in time, beside the
  most-popular baseline, each with its interval.
"""
