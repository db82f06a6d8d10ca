"""Masked losses and metrics as sums plus counts, so padding never counts and means are exact
after summing over batches and devices."""

import jax
import jax.numpy as jnp
import optax

Array = jax.Array


def token_classification_sums(logits: Array, labels: Array, mask: Array) -> dict:
  """logits [B, T, C], labels [B, T] int, mask [B, T] bool -> sums of loss, correct, count."""
  mask = mask.astype(jnp.float32)
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  return {"loss": jnp.sum(nll * mask), "accuracy": jnp.sum(correct * mask),
          "count": jnp.sum(mask)}


def means(sums: dict) -> dict:
  """Sums -> means over `count` (host side, after accumulating)."""
  count = max(float(sums["count"]), 1.0)
  return {k: float(v) / count for k, v in sums.items() if k != "count"}
