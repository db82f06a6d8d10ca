"""Flax NNX front end: `BiRNN`, `Bidirectional`, `Recurrent` and the cells as NNX modules.

The NNX modules only hold parameters (`nnx.Param`) and the dropout layers' RNG streams;
the maths is the pure core (`birnn_jax.core`) that the Linen modules call too: each cell's
parameters, input projection and step (`core.cells`), the recurrences and the fused scan
with its custom VJP, reached through `core.layers.apply_recurrent` / `apply_bidirectional`
and the stack `core.layers.stack_layers`. Neither front end wraps the other. So an NNX
model computes the Linen model's numbers, and its parameters have the Linen model's names
and shapes, `layer_{k}/{forward,backward}/{w_ih, w_hh, b_ih, b_hh, w_hr}`.

Conversions: `from_linen`, `to_linen` and `from_torch`. The cells also follow NNX's cell
protocol (`initialize_carry`, `__call__(carry, x)`, `num_feature_axes`), so they run
inside flax's own `nnx.RNN` / `nnx.Bidirectional`.

Dropout between layers is `nnx.Dropout`: on after construction or `model.train()`, off
after `model.eval()`; its masks come from the `dropout` stream (else `default`) of the
`nnx.Rngs` given at construction, or from a call's `rngs=`.

This package is `birnn_jax.nnx` (`cells`, `layers`, `convert`); it imports flax's as
`from flax import nnx` (absolute), so the two never shadow each other.
"""

from birnn_jax.nnx.cells import Cell, GRUCell, LSTMCell, SimpleCell, make_cell
from birnn_jax.nnx.convert import from_linen, from_torch, to_linen
from birnn_jax.nnx.layers import BiRNN, Bidirectional, Recurrent

__all__ = ["BiRNN", "Bidirectional", "Recurrent", "Cell", "SimpleCell", "GRUCell",
           "LSTMCell", "make_cell", "from_linen", "to_linen", "from_torch"]

# The public names are documented (and doctested, and pickled) as `birnn_jax.nnx.<name>`.
for _name in __all__:
  globals()[_name].__module__ = __name__
del _name
