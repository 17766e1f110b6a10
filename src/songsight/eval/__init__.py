"""Evaluation: metrics on arrays, and the tasks that turn embedding stores into results."""
