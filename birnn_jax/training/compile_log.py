"""What JAX traced and compiled in this process, counted from JAX's own monitoring events.

For every program it builds, JAX reports through `jax.monitoring`:

    /jax/core/compile/jaxpr_trace_duration            the Python function traced to a jaxpr
    /jax/core/compile/jaxpr_to_mlir_module_duration   the jaxpr lowered to StableHLO
    /jax/core/compile/backend_compile_duration        XLA compiled it, or read it from the
                                                      persistent compilation cache
    /jax/compilation_cache/cache_hits                 ... it was read from the cache

(the cache-hit event comes first, inside the backend step it belongs to), so an XLA compile
is a backend step without a cache hit. `install()` registers the listeners once per process;
`snapshot()` is the running total, and the difference of two snapshots is what happened in
between (one training run, one prediction):

    before = compile_log.snapshot()
    ...                                    # train
    logging.info("%s", compile_log.snapshot() - before)   # "4 XLA compiles (3.1 s), ..."

A program name (`jit_train_step`) built more than once in one span is a recompile of the
same function for other shapes, dtypes or shardings: `Counts.rebuilt` names them.

Work done on behalf of one run on any thread (`Trainer` compiles its steps ahead on a
thread of their own, for several variants at once) is counted for it too when that thread
is inside `attributed_to(label)`: `snapshot(of=label)` is that run's total alone.
"""

import collections
import contextlib
import dataclasses
import threading

from absl import logging
import jax

TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"
LOWER_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"
BACKEND_EVENT = "/jax/core/compile/backend_compile_duration"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


@dataclasses.dataclass(frozen=True)
class Counts:
  """Totals since the process started (or, as a difference, over a span).

  Attributes:
    traces, trace_s: functions traced to a jaxpr, and the seconds spent.
    lowerings, lower_s: jaxprs lowered to StableHLO, and the seconds spent.
    compiles, compile_s: programs XLA compiled (a persistent-cache miss, or no cache), and
      the seconds spent.
    cache_hits, cache_s: programs read from the persistent compilation cache instead, and
      the seconds spent reading them.
    programs: program name -> how many times it was built (compiled or read).
  """
  traces: int = 0
  trace_s: float = 0.0
  lowerings: int = 0
  lower_s: float = 0.0
  compiles: int = 0
  compile_s: float = 0.0
  cache_hits: int = 0
  cache_s: float = 0.0
  programs: tuple[tuple[str, int], ...] = ()

  def __sub__(self, other: "Counts") -> "Counts":
    names = collections.Counter(dict(self.programs))
    names.subtract(dict(other.programs))
    return Counts(
        *(getattr(self, f.name) - getattr(other, f.name)
          for f in dataclasses.fields(self) if f.name != "programs"),
        programs=tuple(sorted((k, v) for k, v in names.items() if v > 0)))

  @property
  def seconds(self) -> float:
    """All the time spent getting programs ready: tracing, lowering, compiling, reading."""
    return self.trace_s + self.lower_s + self.compile_s + self.cache_s

  @property
  def rebuilt(self) -> dict[str, int]:
    """Program names built more than once (a recompile for new shapes or shardings)."""
    return {name: n for name, n in self.programs if n > 1}

  def __str__(self) -> str:
    return (f"{self.compiles} XLA compiles ({self.compile_s:.1f} s), {self.cache_hits} "
            f"programs read from the persistent compilation cache ({self.cache_s:.1f} s); "
            f"{self.traces} traces ({self.trace_s:.1f} s), {self.lowerings} lowerings "
            f"({self.lower_s:.1f} s)")


class _Recorder:
  """The process's running totals, fed by the jax.monitoring listeners."""

  def __init__(self):
    self.lock = threading.Lock()
    # label -> counts; None: events outside any `attributed_to` (the process total sums all)
    self.totals = collections.defaultdict(collections.Counter)
    self.programs = collections.defaultdict(collections.Counter)
    self.pending_hit = threading.local()   # a cache hit seen, its backend event to come

  def on_event(self, event: str, **kwargs) -> None:
    del kwargs
    if event == CACHE_HIT_EVENT:
      self.pending_hit.value = True

  def on_duration(self, event: str, duration_secs: float, **kwargs) -> None:
    keys = {TRACE_EVENT: ("traces", "trace_s"), LOWER_EVENT: ("lowerings", "lower_s")}
    label = _label()
    with self.lock:
      if event in keys:
        count, seconds = keys[event]
      elif event == BACKEND_EVENT:
        hit = getattr(self.pending_hit, "value", False)
        self.pending_hit.value = False
        count, seconds = ("cache_hits", "cache_s") if hit else ("compiles", "compile_s")
        self.programs[label][str(kwargs.get("fun_name", "?"))] += 1
      else:
        return
      self.totals[label][count] += 1
      self.totals[label][seconds] += duration_secs


_recorder: _Recorder | None = None
_install_lock = threading.Lock()
_attribution = threading.local()


def _label() -> str | None:
  return getattr(_attribution, "label", None)


@contextlib.contextmanager
def attributed_to(label: str):
  """Counts what this thread builds inside the block for `label` (`snapshot(of=label)`)."""
  previous = _label()
  _attribution.label = label
  try:
    yield
  finally:
    _attribution.label = previous


def install() -> None:
  """Starts counting (idempotent); what was built before the first call is not counted."""
  global _recorder
  with _install_lock:
    if _recorder is None:
      _recorder = _Recorder()
      jax.monitoring.register_event_listener(_recorder.on_event)
      jax.monitoring.register_event_duration_secs_listener(_recorder.on_duration)


def snapshot(of: str | None = None) -> Counts:
  """The totals since `install()` (which it calls): of the whole process, or only what was
  built for the label `of` (`attributed_to`)."""
  install()
  with _recorder.lock:
    labels = list(_recorder.totals) if of is None else [of]
    totals, programs = collections.Counter(), collections.Counter()
    for label in labels:
      totals.update(_recorder.totals.get(label, {}))
      programs.update(_recorder.programs.get(label, {}))
    programs = tuple(sorted(programs.items()))
  return Counts(traces=totals.get("traces", 0), trace_s=totals.get("trace_s", 0.0),
                lowerings=totals.get("lowerings", 0), lower_s=totals.get("lower_s", 0.0),
                compiles=totals.get("compiles", 0), compile_s=totals.get("compile_s", 0.0),
                cache_hits=totals.get("cache_hits", 0), cache_s=totals.get("cache_s", 0.0),
                programs=programs)


@contextlib.contextmanager
def logged(what: str, of: str | None = None):
  """Logs what was built inside the `with` block, as "Compilation in <what>: <Counts>",
  naming any program built more than once there (a recompile: new shapes or shardings).
  With `of`, what was built for that label (`attributed_to`), inside the block or before
  it (compiled ahead), on any thread. Yields the snapshot taken on entry."""
  before = snapshot() if of is None else Counts()
  try:
    yield before
  finally:
    counts = snapshot(of) - before
    rebuilt = ", ".join(f"{name} x{n}" for name, n in sorted(counts.rebuilt.items()))
    logging.info("Compilation in %s: %s%s.", what, counts,
                 f"; recompiled (new shapes or shardings): {rebuilt}" if rebuilt else
                 "; no recompiles")
