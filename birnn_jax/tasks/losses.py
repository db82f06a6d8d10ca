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


def mean_log_probabilities(logits_N: Array, axis: int = 0) -> Array:
  """log of the mean of softmax(logits) over the member axis `axis`: the per-token
  log-probabilities of an ensemble whose members output `logits_N` [N, ..., C] (a seed
  ensemble averages probabilities, not logits). A softmax of it gives the mean itself."""
  log_p = jax.nn.log_softmax(logits_N.astype(jnp.float32), axis=-1)
  return jax.nn.logsumexp(log_p, axis=axis) - jnp.log(logits_N.shape[axis])
