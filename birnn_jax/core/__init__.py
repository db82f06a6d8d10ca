"""The framework-free core: every formula of birnn_jax, once, as functions of parameter pytrees.

- `cells`: each cell's parameters, input projection and step (PyTorch's equations);
- `recurrence`: one chain over a padded batch (`reference`, `scan`), the length contract;
- `fused`: both directions in one scan with a cuDNN-style custom VJP;
- `layers`: one direction, two merged, the stack of layers, and the implementation switch.

It imports jax and numpy only; `birnn_jax.linen` and `birnn_jax.nnx` hold parameters and call it.
"""
