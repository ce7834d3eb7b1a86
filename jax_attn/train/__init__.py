"""The training engine: the train state (``state``), the step bodies (``steps``), their
single-device / pmap / shard_map forms (``parallel``), K steps per dispatch (``multistep``),
optax optimizers (``optim``), orbax checkpoints (``checkpoint``), the run's guards (``guard``),
metrics (``metrics``), multi-process start-up (``distributed``) and the loop that ties them
together (``loop.train_and_evaluate``)."""
