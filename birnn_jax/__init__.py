"""birnn_jax: bidirectional recurrent networks in JAX/Flax.

The library, what `import birnn_jax` gives (it needs jax, flax and numpy only):

- `birnn_jax.core`: the framework-free maths (cells, recurrences, the fused scan, layers);
- the Linen front end (`BiRNN`, `Bidirectional`, `Recurrent`, the cells; `birnn_jax.linen`);
- `birnn_jax.nnx`: the NNX front end over the same core (imported on first use);
- `birnn_jax.load(workdir)`: a trained run's model, to tag sentences and files (imports the
  runner on first use, so it needs the `train` extra);
- `birnn_jax.crf`: a linear-chain CRF; `from_torch` / `to_torch`: PyTorch interop (torch is
  imported only when called); `birnn_jax.errors`.

Above it, and never imported by it: `birnn_jax.tasks` (the experiments' tasks),
`birnn_jax.training` (the runner behind `launch.py`) and `birnn_jax.data` (readers and the
bundled corpora), which need the `train` extra.
"""

import importlib
import importlib.metadata

from birnn_jax.core.layers import IMPLS, MERGES, Impl, merge_directions
from birnn_jax.linen import (CELLS, BiRNN, Bidirectional, GRUCell, LSTMCell, Recurrent,
                             SimpleCell, make_cell)
from birnn_jax.torch_interop import from_torch, to_torch

try:
  __version__ = importlib.metadata.version("birnn_jax")
except importlib.metadata.PackageNotFoundError:  # a source tree that was never installed
  __version__ = "0+unknown"


def __getattr__(name):
  # The NNX front end and the CRF load on first use (`birnn_jax.nnx.BiRNN`,
  # `birnn_jax.crf.CRF`): importing flax.nnx adds about a second to `import birnn_jax`,
  # which Linen-only users need not pay.
  if name in ("nnx", "crf", "errors"):
    return importlib.import_module(f"birnn_jax.{name}")
  if name == "load":  # the runner's loader of a trained workdir (needs the `train` extra)
    try:
      return importlib.import_module("birnn_jax.training.inference").load
    except ModuleNotFoundError as e:
      if (e.name or "").startswith("birnn_jax"):
        raise
      raise ModuleNotFoundError(
          f"birnn_jax.load needs the runner's dependencies, which the `train` extra installs "
          f"({e.name} is missing): pip install 'birnn_jax[train]'", name=e.name) from e
  raise AttributeError(f"module 'birnn_jax' has no attribute {name!r}")


__all__ = ["BiRNN", "Bidirectional", "Recurrent", "CELLS", "GRUCell", "LSTMCell",
           "SimpleCell", "make_cell", "MERGES", "merge_directions", "IMPLS", "Impl",
           "from_torch", "to_torch", "__version__"]
