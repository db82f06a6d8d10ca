"""Config-key checks every task uses, and what an absent later-added key means.

Tasks validate their own keys with `check` / `check_at_least`, which raise a ConfigError
naming `config.<key>`; the runner (`training.config_lib`) uses the same functions for the
shared keys.
"""

import ml_collections

from birnn_jax import errors

# Keys added after workdirs (and configs of users' own) were written without them, and what
# their absence means; read them with `added_key`. The resume check reads an absent one so.
ADDED_KEYS = {"train.ema_decay": 0.0, "model.tag_scheme": "iob2", "model.casing_embed_size": 0,
              "smoke": False, "train.num_seeds": 1, "mesh.members": 1,
              "compare_directions": False, "model.neighbour_lm_weight": 0.0,
              "model.neighbour_lm_vocab": 7500, "model.neighbour_lm_hidden": 50,
              "train.adversarial_epsilon": 0.0, "data.corpus": "time_machine"}


def added_key(section: ml_collections.ConfigDict, key: str):
  """The value of `key` (one of ADDED_KEYS, e.g. 'model.tag_scheme') in `section`, the
  config's group it belongs to (config.model), or what its absence means."""
  return section.get(key.rsplit(".", 1)[-1], ADDED_KEYS[key])


def check(ok: bool, key: str, value, expected: str) -> None:
  """Raises ConfigError naming `config.<key>` unless `ok` (tasks use it for their keys)."""
  if not ok:
    raise errors.ConfigError(f"config.{key}={value!r} is invalid: expected {expected}.")


def check_at_least(config: ml_collections.ConfigDict, minimums: dict[str, float]) -> None:
  """`check` that each 'group.name' key of `config` is >= its minimum."""
  for key, minimum in minimums.items():
    group, name = key.split(".")
    value = config[group][name]
    check(value >= minimum, key, value, f">= {minimum}")
