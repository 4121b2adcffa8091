"""Evaluation: the Table-2 protocol over a policy, and the report of a run."""
