"""Draws the documentation's figures (docs/figures/*.png) from real computations and runs.

    python scripts/figures.py chains                        # computed here, in seconds
    python scripts/figures.py synthetic RUN_DIR             # a synthetic_tagging.py workdir
    python scripts/figures.py pos BIDI_RUN_DIR FORWARD_RUN_DIR   # two pos_ewt.py workdirs
    python scripts/figures.py seeds RUN_DIR eval_f1         # a run of several members

`chains` runs a `birnn_jax.BiRNN` on a padded batch and draws what it computed: which steps
each chain visits (from the outputs, which are zero exactly at padding) and the Jacobian of
each direction's outputs with respect to the inputs. `synthetic` and `pos` read the
`metrics.jsonl` and `results.json` of finished runs (see docs/experiments/*.md for the
commands that made the committed figures). Needs the `train` extra (matplotlib).
"""

import argparse
import json
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top
import numpy as np  # noqa: E402  pylint: disable=g-import-not-at-top

OUT = pathlib.Path(__file__).resolve().parent.parent / "docs" / "figures"
FORWARD, BACKWARD = "#1f77b4", "#d62728"


def read_metrics(workdir: pathlib.Path) -> list[dict]:
  with open(workdir / "metrics.jsonl", encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def series(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
  points = [(r["step"], r[key]) for r in rows if key in r]
  return np.array([p[0] for p in points]), np.array([p[1] for p in points])


# ------------------------------------------------------------------------------ chains


def chains(out: pathlib.Path) -> pathlib.Path:
  """The two chains over a padded batch, from a real BiRNN's outputs and Jacobians."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import birnn_jax  # pylint: disable=g-import-not-at-top

  lengths = np.array([7, 4, 1, 0])
  batch, steps, features, hidden = len(lengths), 8, 3, 4
  x = jax.random.normal(jax.random.key(0), (batch, steps, features))
  model = birnn_jax.BiRNN(cell="gru", hidden_size=hidden, merge="none")
  variables = model.init(jax.random.key(1), x, jnp.asarray(lengths))
  (y_f, y_b), _ = model.apply(variables, x, jnp.asarray(lengths))
  visited_f = np.abs(np.asarray(y_f)).sum(-1) > 0   # [batch, time]: outputs are 0 on padding
  visited_b = np.abs(np.asarray(y_b)).sum(-1) > 0
  assert (visited_f == (np.arange(steps) < lengths[:, None])).all()
  assert (visited_b == visited_f).all()

  # d y_t / d x_s of sequence 1 (length 4), summed over features: [t, s] for each direction.
  row = 1
  def outputs(x_row):
    xs = x.at[row].set(x_row)
    (f, b), _ = model.apply(variables, xs, jnp.asarray(lengths))
    return f[row], b[row]
  jac_f, jac_b = jax.jacobian(outputs)(x[row])      # [T, H, T, D] each
  dep_f = np.abs(np.asarray(jac_f)).sum(axis=(1, 3))
  dep_b = np.abs(np.asarray(jac_b)).sum(axis=(1, 3))

  fig = plt.figure(figsize=(11, 4.2))
  grid = fig.add_gridspec(1, 3, width_ratios=[1.6, 1, 1], wspace=0.35)
  ax = fig.add_subplot(grid[0])
  for b in range(batch):
    y_f_row, y_b_row = b * 2 + 0.55, b * 2 + 0.05
    for t in range(steps):
      real = t < lengths[b]
      ax.add_patch(plt.Rectangle((t - 0.4, b * 2 - 0.3), 0.8, 1.2,
                                 color="white" if real else "#dddddd", ec="#999999"))
      if not real:
        ax.text(t, b * 2 + 0.3, "pad", ha="center", va="center", fontsize=7, color="#888888")
    for t in range(steps - 1):
      if visited_f[b, t] and visited_f[b, t + 1]:
        ax.annotate("", (t + 0.75, y_f_row), (t + 0.25, y_f_row),
                    arrowprops=dict(arrowstyle="->", color=FORWARD))
      if visited_b[b, t] and visited_b[b, t + 1]:
        ax.annotate("", (t + 0.25, y_b_row), (t + 0.75, y_b_row),
                    arrowprops=dict(arrowstyle="->", color=BACKWARD))
    for t in range(steps):
      if visited_f[b, t]:
        ax.plot(t, y_f_row, "o", color=FORWARD, ms=5)
        ax.plot(t, y_b_row, "o", color=BACKWARD, ms=5)
    if lengths[b]:
      last = lengths[b] - 1
      ax.plot(last, y_f_row, "s", color=FORWARD, ms=9, mfc="none")
      ax.plot(0, y_b_row, "s", color=BACKWARD, ms=9, mfc="none")
    ax.text(-0.8, b * 2 + 0.3, f"lengths[{b}] = {lengths[b]}", ha="right", va="center",
            fontsize=8)
  ax.plot([], [], "o-", color=FORWARD, label="forward chain, t = 0 .. L-1")
  ax.plot([], [], "o-", color=BACKWARD, label="backward chain, from t = L-1 down to 0")
  ax.plot([], [], "s", color="k", mfc="none", label="the step whose carry is the final state")
  ax.set_xlim(-3.2, steps - 0.4)
  ax.set_ylim(batch * 2 - 0.2, -0.6)
  ax.set_xticks(range(steps))
  ax.set_xlabel("time step t")
  ax.set_yticks([])
  ax.legend(loc="upper center", fontsize=7.5, ncol=1, bbox_to_anchor=(0.5, -0.13), frameon=False)
  ax.set_title("(a) steps each chain visits (outputs != 0)", fontsize=9)
  for ax, dep, name, color in ((fig.add_subplot(grid[1]), dep_f, "forward", "Blues"),
                               (fig.add_subplot(grid[2]), dep_b, "backward", "Reds")):
    ax.imshow(np.log10(dep + 1e-8), cmap=color, vmin=-4, vmax=np.log10(dep.max()))
    ax.set_xlabel("input step s")
    ax.set_ylabel("output step t")
    ax.set_xticks(range(steps))
    ax.set_yticks(range(steps))
    ax.axhline(lengths[row] - 0.5, color="k", lw=0.8, ls="--")
    ax.axvline(lengths[row] - 0.5, color="k", lw=0.8, ls="--")
    ax.set_title(f"({'b' if name == 'forward' else 'c'}) |d y{'→' if name == 'forward' else '←'}_t"
                 f" / d x_s|, lengths[{row}] = {lengths[row]}", fontsize=9)
  fig.suptitle("A BiRNN over a padded batch (GRU, T = 8): each chain stays inside its "
               "sequence; padding is neither read nor written", fontsize=10, y=1.03)
  path = out / "chains.png"
  fig.savefig(path, dpi=130, bbox_inches="tight")
  plt.close(fig)
  return path


# --------------------------------------------------------------------------- synthetic


def synthetic(workdir: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
  """Test accuracy of both models during training, against the left-context ceiling."""
  results = json.loads((workdir / "results.json").read_text())
  ceiling, stderr = results["left_context_ceiling"], results["left_context_ceiling_stderr"]
  fig, ax = plt.subplots(figsize=(6.5, 3.8))
  for name, color, label in (("bidirectional", BACKWARD, "bidirectional LSTM"),
                             ("unidirectional", FORWARD, "forward-only LSTM")):
    steps, acc = series(read_metrics(workdir / name), "eval_accuracy")
    final = results[f"{name}_accuracy"]
    ax.plot(steps, 100 * acc, "o-", color=color, ms=3,
            label=f"{label} (final {100 * final:.2f}%)")
  ax.axhline(100 * ceiling, color="k", ls="--", lw=1,
             label=f"left-context ceiling {100 * ceiling:.1f}%")
  ax.axhspan(100 * (ceiling - 3 * stderr), 100 * (ceiling + 3 * stderr), color="k", alpha=0.1)
  ax.set_xlabel("training step")
  ax.set_ylabel("held-out token accuracy (%)")
  ax.set_ylim(60, 101)
  ax.legend(fontsize=8, loc="lower right")
  ax.set_title("Synthetic tagging: the tag is decided by the next word", fontsize=10)
  path = out / "synthetic_accuracy.png"
  fig.savefig(path, dpi=130, bbox_inches="tight")
  plt.close(fig)
  return path


# --------------------------------------------------------------------------------- pos


def pos(bidi: pathlib.Path, forward: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
  """Training loss and dev accuracy of the bidirectional and forward-only POS taggers."""
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
  for workdir, color, label in ((bidi, BACKWARD, "bidirectional"),
                                (forward, FORWARD, "forward-only")):
    results = json.loads((workdir / "results.json").read_text())
    per_epoch = results["steps_per_epoch"]
    rows = read_metrics(workdir)
    steps, loss = series(rows, "train_loss")
    ax_loss.plot(steps / per_epoch, loss, "-", color=color, label=label)
    steps, acc = series(rows, "eval_accuracy")
    ax_acc.plot(steps / per_epoch, 100 * acc, "o-", color=color, ms=3,
                label=f"{label}: test {100 * results['test_accuracy']:.2f}%")
  ax_loss.set_xlabel("epoch")
  ax_loss.set_ylabel("training loss (cross-entropy)")
  ax_loss.set_yscale("log")
  ax_loss.legend(fontsize=8)
  ax_acc.set_xlabel("epoch")
  ax_acc.set_ylabel("dev UPOS accuracy (%)")
  ax_acc.legend(fontsize=8, loc="lower right")
  fig.suptitle("POS tagging on UD English-EWT (experiments/pos_ewt.py, 2 epochs)", fontsize=10)
  path = out / "pos_curves.png"
  fig.savefig(path, dpi=130, bbox_inches="tight")
  plt.close(fig)
  return path


# ------------------------------------------------------------------------------- seeds


def seeds(workdir: pathlib.Path, metric: str, out: pathlib.Path) -> pathlib.Path:
  """A run of several members (`train.num_seeds`): `metric` (e.g. eval_f1) of each variant
  by epoch, the members' mean with a band from the smallest to the largest member."""
  variants = sorted({p.parent.parent for p in workdir.glob("*/seed_*/metrics.jsonl")})
  variants = variants or [workdir]   # a run of one model: its members are in the workdir
  percent = not any(word in metric for word in ("loss", "perplexity"))   # a rate: in %
  fig, ax = plt.subplots(figsize=(6.5, 4))
  for vdir in variants:
    per_epoch = json.loads((vdir / "results.json").read_text()).get("steps_per_epoch") or 1
    members = sorted(vdir.glob("seed_*"))
    series_ = [dict(zip(*series(read_metrics(m), metric))) for m in members]
    steps = sorted(set.intersection(*(set(s) for s in series_)))
    values = (100 if percent else 1) * np.array([[s[t] for t in steps] for s in series_])
    x = np.asarray(steps) / per_epoch
    line, = ax.plot(x, values.mean(0), "o-", ms=3,
                    label=f"{vdir.name if vdir != workdir else metric} "
                          f"(mean of {len(members)} seeds)")
    ax.fill_between(x, values.min(0), values.max(0), color=line.get_color(), alpha=0.2)
  ax.set_xlabel("epoch" if per_epoch > 1 else "step")
  ax.set_ylabel(f"{metric} (%)" if percent else metric)
  if not percent:
    ax.set_yscale("log")
  ax.legend(fontsize=8, loc="best")
  ax.set_title(f"{workdir.name}: {metric}, mean over seeds, band from min to max", fontsize=10)
  path = out / f"{workdir.name}_{metric}_seeds.png"
  fig.savefig(path, dpi=130, bbox_inches="tight")
  plt.close(fig)
  return path


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="figure", required=True)
  sub.add_parser("chains")
  sub.add_parser("synthetic").add_argument("workdir", type=pathlib.Path)
  pos_parser = sub.add_parser("pos")
  pos_parser.add_argument("bidirectional_workdir", type=pathlib.Path)
  pos_parser.add_argument("forward_workdir", type=pathlib.Path)
  seeds_parser = sub.add_parser("seeds")
  seeds_parser.add_argument("workdir", type=pathlib.Path)
  seeds_parser.add_argument("metric")
  parser.add_argument("--out", type=pathlib.Path, default=OUT)
  args = parser.parse_args()
  args.out.mkdir(parents=True, exist_ok=True)
  if args.figure == "chains":
    path = chains(args.out)
  elif args.figure == "synthetic":
    path = synthetic(args.workdir, args.out)
  elif args.figure == "seeds":
    path = seeds(args.workdir, args.metric, args.out)
  else:
    path = pos(args.bidirectional_workdir, args.forward_workdir, args.out)
  print(path)


if __name__ == "__main__":
  main()
