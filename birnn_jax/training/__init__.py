"""The experiment runner behind `launch.py`: the generic trainer and experiment driver
(`train`), trained runs read back (`trained`), checkpoints, metrics, sharding, the optimiser,
prefetching, the workdir lock and config handling. It finds a task by `config.task` and knows
none by name; the library and the tasks never import it."""
