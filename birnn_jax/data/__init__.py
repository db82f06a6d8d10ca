"""Data readers and batching. They know no model (the ground floor of the house)."""

from birnn_jax.data.common import DataError, resolve_data_dir

__all__ = ["DataError", "resolve_data_dir"]
