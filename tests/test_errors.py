"""birnn_jax.errors: one hierarchy of errors a user can fix, which launch.py reports by type."""

import pytest

from birnn_jax.training import config_lib
from birnn_jax import errors
from birnn_jax.data import common
import launch


@pytest.mark.parametrize("error", [
    errors.ConfigError("config.x=1 is invalid"), errors.DataError("bad", "f.conllu", 3),
    errors.InputError("no blank"), errors.WorkdirError("read-only"),
    errors.WorkdirMismatchError("other run"), errors.NoCheckpointError("train first"),
    errors.NonFiniteError("nan")])
def test_every_user_error_is_reported_in_one_line(error):
  assert isinstance(error, errors.BirnnError) and launch.is_expected(error)


def test_errors_keep_their_builtin_types():
  assert issubclass(errors.ConfigError, ValueError)
  assert issubclass(errors.NoCheckpointError, FileNotFoundError)
  assert issubclass(errors.WorkdirMismatchError, OSError)
  assert issubclass(errors.NonFiniteError, FloatingPointError)
  assert common.DataError is errors.DataError


def test_classified_by_type_not_by_message():
  assert not launch.is_expected(ValueError("config.looks like ours but is a bug"))
  assert not launch.is_expected(FileNotFoundError("no checkpoint in x"))
  assert not launch.is_expected(KeyError("config"))


def test_config_checks_raise_config_errors():
  with pytest.raises(errors.ConfigError, match=r"^config\.a\.b=0 is invalid: expected > 0"):
    config_lib.check(False, "a.b", 0, "> 0")
  assert str(errors.DataError("bad line", "x.conllu", 7)) == "x.conllu:7: bad line"
