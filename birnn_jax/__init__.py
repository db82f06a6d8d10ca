"""birnn_jax: bidirectional recurrent networks in JAX/Flax.

Layers, each importing only those below: `cells` -> `recurrence` -> `bidirectional` ->
`models`. PyTorch interop (`from_torch`, `to_torch`) imports torch only when called.
`birnn_jax.nnx` is the Flax NNX front end over the same functions (imported on first use).
"""

import importlib

from birnn_jax.bidirectional import Bidirectional, MERGES, Recurrent, merge_directions
from birnn_jax.cells import CELLS, GRUCell, LSTMCell, SimpleCell, make_cell
from birnn_jax.models import BiRNN
from birnn_jax.torch_interop import from_torch, to_torch
from birnn_jax import bidirectional as _bidirectional
from birnn_jax import fused as _fused  # registers impl 'fused'

IMPLS = _bidirectional.impl_names()


def __getattr__(name):
  # The NNX front end loads on first use (`birnn_jax.nnx.BiRNN`): importing flax.nnx adds
  # about a second to `import birnn_jax`, which Linen-only users need not pay.
  if name == "nnx":
    return importlib.import_module("birnn_jax.nnx")
  raise AttributeError(f"module 'birnn_jax' has no attribute {name!r}")


__all__ = ["BiRNN", "Bidirectional", "Recurrent", "CELLS", "GRUCell", "LSTMCell",
           "SimpleCell", "make_cell", "MERGES", "merge_directions", "IMPLS",
           "from_torch", "to_torch"]
