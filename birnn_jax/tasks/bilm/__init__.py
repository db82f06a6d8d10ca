"""The ELMo-style biLM task on The Time Machine (`config.task = "bilm"`), in four modules:

- `model`: the biLM itself (`BiLM`, `mix_weights`);
- `probe`: punctuation labels from the raw book and the linear / lookup probes;
- `task`: the Task (training, contextual vectors, the polysemy report, the probe verdict);
- `features`: `FrozenFeatures`, a trained biLM's layer states as another task's inputs.
"""

from birnn_jax.tasks.bilm.features import FrozenFeatures, book_token
from birnn_jax.tasks.bilm.model import BiLM, mix_weights
from birnn_jax.tasks.bilm.probe import (PROBE_CLASSES, lookup_probe, probe_scores,
                                        punctuation_labels, ridge_probe)
from birnn_jax.tasks.bilm.task import VOCAB_FILE, Task
