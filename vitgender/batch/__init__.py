"""Batch classification beyond one machine: the Ray Data pipeline of `classify --ray` and its result shards."""
