"""The markdown an experiment page shows for a run of several members (`train.num_seeds`):
its headline metrics over seeds, the ensemble's figures and the paired differences, from
the run's results.json alone.

    python scripts/seeds_table.py runs/ner5 test_f1 dev_f1

(`birnn_jax.training.members.statistics_table` restricted to the named metrics, then
`seeds_verdict` of the first one.)
"""

import argparse
import json
import pathlib

from birnn_jax.training import members


def keep(summary: dict, metrics: list[str]) -> dict:
  """`summary` with its statistics, ensembles and paired differences cut to `metrics`."""
  cut = lambda d: {k: v for k, v in d.items() if k in metrics}
  out = dict(summary)
  for key in ("member_statistics", "ensembles", "paired_differences"):
    if key in out:
      out[key] = {name: cut(d) for name, d in out[key].items()}
  for key in ("statistics", "ensemble"):
    if key in out:
      out[key] = cut(out[key])
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdir", type=pathlib.Path)
  parser.add_argument("metrics", nargs="+")
  args = parser.parse_args()
  summary = keep(json.loads((args.workdir / "results.json").read_text()), args.metrics)
  print(members.statistics_table(summary))
  print()
  print(members.seeds_verdict(summary, args.metrics[0]))


if __name__ == "__main__":
  main()
