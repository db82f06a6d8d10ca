"""`--mode=export`: a trained tagger as a self-contained artifact that needs jax, numpy and
flatbuffers only (`RUNTIME_REQUIRES`: jax's `jax.export.deserialize` reads the model with
flatbuffers, which `pip install jax` does not bring); no flax, no birnn_jax.

    DIR/model.jax     the prediction function, serialised by `jax.export` (StableHLO), the
                      parameters inside as constants; lowered for cpu, cuda and tpu in one
                      artifact (lowering for a platform needs no such hardware), with
                      symbolic batch and length: words int32 [b, t], chars int32 [b, t, C],
                      lengths int32 [b] -> label ids int32 [b, t]
    DIR/meta.json     labels, word and character vocabularies, how words are looked up,
                      "requires": the distributions the loader needs (`RUNTIME_REQUIRES`)
    DIR/predict.py    the loader (`export_runtime.py`): imports jax and numpy only, and
                      without one of `RUNTIME_REQUIRES` stops with one line naming what
                      to `pip install`

Taggers only (POS, NER): their inputs are token ids a small loader can make.
"""

import json
import pathlib
import shutil

import jax
from jax import export as jax_export
import jax.numpy as jnp

import birnn_jax
from birnn_jax import errors

PLATFORMS = ("cpu", "cuda", "tpu")
# The distributions (pip names) an exported tagger runs with, and nothing else: what
# predict.py imports, and flatbuffers for `jax.export.deserialize`. export_runtime.py
# keeps its own copy (it imports nothing of birnn_jax); a test checks the two are equal.
RUNTIME_REQUIRES = ("jax", "numpy", "flatbuffers")


def runtime_requires_text() -> str:
  """What an exported tagger needs, as a phrase: "jax, numpy and flatbuffers"."""
  return ", ".join(RUNTIME_REQUIRES[:-1]) + " and " + RUNTIME_REQUIRES[-1]


def export_tagger(predictor, out_dir, platforms=PLATFORMS) -> dict:
  """Writes `predictor`'s tagger to `out_dir` (see the module docstring); returns meta.json.

  Raises:
    errors.InputError: the model is not an exportable tagger (a task without token labels,
      or a POS tagger that reads a biLM's features).
  """
  task, params = predictor.task, predictor.params
  if not hasattr(task, "ids_from_outputs"):
    raise errors.InputError(f"--mode=export: a {task.config.task!r} model cannot be "
                            "exported; the taggers (pos, ner) can.")
  if getattr(task, "bilm", None) is not None:
    raise errors.InputError("--mode=export: a tagger that reads a biLM's features "
                            "(model.bilm_workdir) cannot be exported on its own.")
  model, d = task.model(), task.config.data
  if d.pad_to < 2:
    raise errors.InputError(f"--mode=export needs config.data.pad_to >= 2, got {d.pad_to}.")

  def tag(words, chars, lengths):
    outputs = model.apply({"params": params}, words, chars, None, lengths, deterministic=True)
    return task.ids_from_outputs(outputs).astype(jnp.int32)

  # Batches are padded to at least data.pad_to steps (the loader does so too), so t >= 2:
  # the CRF's Viterbi scans the t - 1 transitions, a loop JAX must know is not empty.
  batch, steps = jax_export.symbolic_shape("b, t", constraints=("t >= 2",))
  exported = jax_export.export(jax.jit(tag), platforms=tuple(platforms))(
      jax.ShapeDtypeStruct((batch, steps), jnp.int32),
      jax.ShapeDtypeStruct((batch, steps, d.max_chars), jnp.int32),
      jax.ShapeDtypeStruct((batch,), jnp.int32))
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  meta = {"task": task.config.task, "labels": list(task.label_names),
          "word_vocab": list(task.word_vocab.tokens), "char_vocab": list(task.char_vocab.tokens),
          "lowercase": bool(d.lowercase), "max_chars": int(d.max_chars),
          "min_length": int(d.pad_to), "platforms": list(exported.platforms),
          "requires": list(RUNTIME_REQUIRES),
          "trained_run": str(predictor.workdir), "member": predictor.member,
          "seeds": _seeds(predictor), "birnn_jax": birnn_jax.__version__,
          "jax": jax.__version__}
  _write_bytes(out_dir / "model.jax", bytes(exported.serialize()))
  _write_bytes(out_dir / "meta.json", json.dumps(meta, ensure_ascii=False).encode())
  shutil.copyfile(pathlib.Path(__file__).with_name("export_runtime.py"),
                  out_dir / "predict.py")
  return meta


def _seeds(predictor) -> list[int]:
  """The seeds of the members the artifact predicts with (all of them for an ensemble)."""
  config = predictor.config
  if predictor.member == "ensemble":
    return [config.seed + k for k in range(config.train.num_seeds)]
  return [config.seed + predictor.member]


def _write_bytes(path: pathlib.Path, data: bytes) -> None:
  tmp = path.with_name(f".{path.name}.tmp")
  tmp.write_bytes(data)
  tmp.replace(path)
