"""``train_and_evaluate``: data, steps, logging, evaluation, checkpoints and exact resume."""
from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

import flax
import jax
import ml_collections
import numpy as np

from jax_attn import configs, data, models
from jax_attn.data import augment, pipeline
from jax_attn.errors import UserError
from jax_attn.models import whitening
from jax_attn.train import checkpoint, guard, multistep, optim
from jax_attn.train.metrics import MetricsWriter, TrainMeter, tta_note
from jax_attn.train.parallel import AXIS, Parallel
from jax_attn.train.state import Lookahead, create_state
from jax_attn.train.steps import eval_result, evaluate, make_eval_body, make_train_body


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
  """Trains ``config`` in ``workdir`` (resuming from its newest checkpoint), evaluates it and
  returns the summary that ``summary.json`` holds."""
  run = _Run(config, Path(workdir))
  try:
    with guard.armed_nan_checks():
      return run.run()
  finally:
    run.lock.release()


def diverged(what: str, workdir: Path, dtype: str) -> UserError:
  """The one-line error of a diverged run: what happened, the checkpoint kept, what to change.
  bf16 adds float32 to the advice: bf16 runs of the notebook's SA-CNN have gone NaN on a GPU
  at a step where float32 runs trained normally (RESULTS.md)."""
  advice = "Lower --learning_rate or set --grad_clip_norm"
  if dtype == "bfloat16":
    advice += ", or train in float32 (--dtype=float32)"
  return UserError(f"{what}: stopping; the last good checkpoint in {workdir / 'checkpoints'} "
                   f"is kept. {advice}")


def _with(config: ml_collections.ConfigDict, **values: Any) -> ml_collections.ConfigDict:
  new = ml_collections.ConfigDict(config.to_dict())
  for key, value in values.items():
    configs.set_value(new, key, value)
  return new


class _Run:
  """One training run: built once (data, model, state, compiled steps), then ``run()``."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: Path):
    self.workdir = workdir
    self.writer = MetricsWriter(workdir)
    config = _with(config, parallel=config.parallel or ("pmap" if jax.device_count() > 1
                                                        else "none"))
    self.parallel = Parallel.create(config.parallel, config.batch_size, config.cpu_kernels)
    self.train_split, self.eval_split, self.train_spec, self.eval_spec = data.load_train_eval(
        config, self.writer.log)
    self.config = config = _with(config, image_size=self.train_split.images.shape[1],
                                 class_names=self.train_split.class_names)
    configs.validate(config)  # the model's own checks, now that the image size is known
    guard.prepare_workdir(workdir)
    self.lock = guard.WorkdirLock(workdir, self.writer.log)
    try:
      self._build(config, workdir)
    except BaseException:
      self.lock.release()
      raise

  def _build(self, config: ml_collections.ConfigDict, workdir: Path) -> None:
    checkpoint.check_resumable(workdir, config, self.writer.log)
    guard.remove_partial_checkpoints(workdir / "checkpoints", self.writer.log)
    # When the batch is split over devices: batch norm and dropout of the global batch.
    self.model = models.get_model(config, batch_axis=AXIS if config.parallel != "none" else None)
    self.steps_per_epoch = pipeline.steps_per_epoch(len(self.train_split), config.batch_size)
    full_run = self.steps_per_epoch * config.epochs
    self.end_step = min(full_run, config.max_steps or full_run)
    self.schedule = optim.make_schedule(config, self.steps_per_epoch)
    self.host_state, tx = self._initial_state()
    self.num_params = models.count_params(self.host_state.params)
    lookahead = (Lookahead(config.lookahead_every_steps, config.lookahead_decay, full_run)
                 if config.lookahead_every_steps else None)
    train_body = make_train_body(self.model, tx, config.augment, config.label_smoothing,
                                 self.steps_per_epoch, lookahead, config.attention_impl)
    eval_body = make_eval_body(self.model, config.augment, config.eval_flip,
                               config.eval_translate, config.attention_impl)
    self.train_step = self.parallel.wrap(train_body, donate_state=True)
    self.eval_step = self.parallel.wrap(eval_body, donate_state=False)
    if config.steps_per_call > 1:  # the splits go on the devices in run()
      if jax.default_backend() == "cpu":
        self.writer.log(f"note: --steps_per_call={config.steps_per_call} on a CPU: no faster "
                        "for the ViT and ~15x slower for convolutions (RESULTS.md); use 1 here")
      self.train_call = self.parallel.wrap(multistep.scan_train(train_body), donate_state=True,
                                           replicated=2)
      self.eval_call = self.parallel.wrap(multistep.scan_eval(eval_body), donate_state=False,
                                          replicated=2)
    self.checkpointer = checkpoint.Checkpointer(workdir / "checkpoints", config.keep_checkpoints,
                                                self.writer.log)
    self.meter = TrainMeter(self.writer, self.schedule, config.batch_size, self.end_step)

  def _initial_state(self) -> tuple[Any, Any]:
    """The step-0 train state (whitening filters from the training images) and its optimizer."""
    config, image_shape = self.config, self.train_split.images.shape[1:]
    shapes = jax.eval_shape(
        lambda: models.init_variables(self.model, jax.random.key(0), image_shape))
    tx = optim.make_optimizer(config, self.schedule, self.steps_per_epoch, shapes["params"],
                              shapes.get("batch_stats", {}))
    state = create_state(self.model, tx, config.seed, image_shape,
                         lookahead=bool(config.lookahead_every_steps))
    if whitening.has_whitening(state.params):  # from the first 5,000 training images, as airbench
      images = augment.normalize(self.train_split.images[:5000], config.augment.normalization)
      state = state.with_params(whitening.set_whitening(state.params, np.asarray(images)))
    return jax.device_get(state), tx

  # ---------------------------------------------------------------- checkpoints
  def _checkpoint_tree(self, state: Any) -> dict[str, Any]:
    return {"state": flax.serialization.to_state_dict(state), **self.meter.checkpoint_tree()}

  def _restore(self) -> None:
    restored = self.checkpointer.restore_latest(self._checkpoint_tree(self.host_state))
    if restored is None:
      return
    step, tree = restored
    self.host_state = flax.serialization.from_state_dict(self.host_state, tree["state"])
    self.meter.restore(tree)
    self.writer.truncate_after(step)
    self.writer.log(f"resumed from the checkpoint at step {step} in {self.workdir}")

  def _save(self, state: Any, step: int) -> None:
    host = self.parallel.to_host(state)
    if not all(np.all(np.isfinite(x)) for x in jax.tree.leaves(host.params)):
      raise diverged(f"the parameters became non-finite by step {step}", self.workdir,
                     self.config.dtype)
    self.checkpointer.save(step, self._checkpoint_tree(host))

  # ---------------------------------------------------------------- metrics
  def _flush(self, pending: list[tuple[int, Any]], interval_start: float, epoch: int,
             compiled: int = 0) -> None:
    """Fetches the pending step metrics (one host sync), checks them, logs one record; the
    first ``compiled`` steps are left out of its throughput."""
    if not pending:
      return
    steps, values = multistep.per_step(
        [s for s, _ in pending], self.parallel.to_host([m for _, m in pending]))
    for step, metrics in zip(steps, values):
      if not np.isfinite(metrics["loss"]):
        raise diverged(f"the training loss became {float(metrics['loss'])} at step {step}",
                       self.workdir, self.config.dtype)
    self.meter.window(values, pending[-1][0], epoch, time.perf_counter() - interval_start,
                      compiled)
    pending.clear()

  def _end_epoch(self, state: Any, epoch: int, step: int) -> dict[str, float] | None:
    """Closes the epoch (or, at a --max_steps inside one, the run): its record, evaluated at
    the end and every --eval_every_epochs."""
    ended = step % self.steps_per_epoch != 0
    record = self.meter.close_epoch(step, epoch, ended)
    evaluation = None
    line = f"Loss: {record['train_loss']:.4f}, Epoch [{epoch + 1}]" + (
        f", stopped at step {step}" if ended else "")
    if step >= self.end_step or (epoch + 1) % self.config.eval_every_epochs == 0:
      evaluation = self._evaluate(state)
      record.update(eval_loss=evaluation["eval_loss"], eval_accuracy=evaluation["eval_accuracy"])
      line += f", eval accuracy {evaluation['eval_accuracy']:.2%} on {self.eval_spec}"
      if "eval_accuracy_no_flip" in evaluation:
        record["eval_accuracy_no_flip"] = evaluation["eval_accuracy_no_flip"]
      line += tta_note(evaluation, self.config)
    self.writer.write_metrics(record)
    self.writer.log(line)
    return evaluation

  def _evaluate(self, state: Any) -> dict[str, float]:
    if self.config.steps_per_call == 1:
      return evaluate(self.eval_step, state, self.eval_split, self.parallel)
    if not hasattr(self, "eval_block"):
      self.eval_data = multistep.resident(self.eval_split, self.parallel)
      self.eval_block = self.parallel.put_batch(
          multistep.eval_block(len(self.eval_split), self.parallel.global_batch))
    sums = self.parallel.to_host(self.eval_call(state, self.eval_data, self.eval_block))
    return eval_result({k: v.item() for k, v in sums.items()})

  # ---------------------------------------------------------------- the loop
  def _calls(self, epoch: int, first: int) -> Any:
    """``(steps, function, arguments after the state)`` of each dispatch of ``epoch`` from
    its step ``first``: one step per batch, or ``--steps_per_call`` steps on resident data."""
    config = self.config
    if config.steps_per_call == 1:
      batches = pipeline.train_batches(
          self.train_split, seed=config.seed, epoch=epoch, global_batch=config.batch_size,
          first_step=first)
      return ((1, self.train_step, (batch,))
              for batch in pipeline.prefetch(batches, self.parallel.put_batch))
    if not hasattr(self, "train_data"):
      self.train_data = multistep.resident(self.train_split, self.parallel)
    ends = lambda step: multistep.call_end(  # noqa: E731
        step, steps_per_call=config.steps_per_call, steps_per_epoch=self.steps_per_epoch,
        end_step=self.end_step, every=(config.log_every_steps, config.checkpoint_every_steps))
    blocks = multistep.train_blocks(len(self.train_split), seed=config.seed, epoch=epoch,
                                    global_batch=config.batch_size, first_step=first,
                                    steps_per_call=config.steps_per_call, ends=ends)
    return multistep.dispatches(blocks, self.parallel, self.train_call, self.train_data)

  def run(self) -> dict[str, Any]:
    config = self.config
    self._restore()
    self.writer.write_json("config.json", configs.to_json(config))
    step = int(self.host_state.step)
    state = self.parallel.replicate(self.host_state)
    self.writer.log(
        f"{configs.describe(config)}: {self.num_params:,} parameters; "
        f"{len(self.train_split)} train examples ({self.train_spec}), {len(self.eval_split)} eval "
        f"({self.eval_spec}); {self.steps_per_epoch} steps/epoch; {self.parallel.num_devices} "
        f"{jax.default_backend()} device(s), --parallel={config.parallel}")
    self.writer.start_progress(self.end_step, step)
    evaluation, compiled, first_window = None, 0, True
    with guard.StopSignals() as signals:
      try:
        while step < self.end_step:
          epoch, first = divmod(step, self.steps_per_epoch)
          pending: list[tuple[int, Any]] = []
          interval_start = time.perf_counter()
          for steps, function, arguments in self._calls(epoch, first):
            state, metrics = function(state, *arguments)
            step += steps
            pending.append((step, metrics))
            if not compiled:  # the run's first call compiled: its time is not training's
              jax.block_until_ready(metrics)
              interval_start, compiled = time.perf_counter(), steps
            epoch_done = step % self.steps_per_epoch == 0
            save_now = step % config.checkpoint_every_steps == 0
            flush = (step % config.log_every_steps == 0 or save_now or epoch_done
                     or step == self.end_step)
            if flush:
              self._flush(pending, interval_start, epoch, compiled if first_window else 0)
              first_window = False
            if epoch_done or step == self.end_step:
              evaluation = self._end_epoch(state, epoch, step)
              save_now = True
            if save_now:
              self._save(state, step)
            if step == self.end_step:
              break
            if flush:  # evaluation and checkpoints are not training either
              interval_start = time.perf_counter()
            # One process: every step. Several: where they log, so all stop at the same step.
            if jax.process_count() == 1 or step % config.log_every_steps == 0:
              stop = signals.agreed()
              if stop:
                self._flush(pending, interval_start, epoch, compiled if first_window else 0)
                if not save_now:
                  self._save(state, step)
                raise guard.StoppedBySignal(stop, step)
      finally:
        self.writer.close()
        self.checkpointer.close()
    if evaluation is None:
      evaluation = self._evaluate(state)
    return self._summary(evaluation, step)

  def _summary(self, evaluation: dict[str, float], step: int) -> dict[str, Any]:
    config = self.config
    summary = {
        "model": config.model_name, "recipe": config.recipe,
        "params": self.num_params, "epochs": step / self.steps_per_epoch, "steps": step,
        "eval_accuracy": evaluation["eval_accuracy"], "eval_loss": evaluation["eval_loss"],
        "eval_examples": evaluation["eval_count"], "eval_split": self.eval_spec,
        "eval_flip": config.eval_flip,
        **({"eval_accuracy_no_flip": evaluation["eval_accuracy_no_flip"]}
           if "eval_accuracy_no_flip" in evaluation else {}),
        "train_split": self.train_spec, "train_wall_s": self.meter.train_wall,
        "train_images_per_sec": self.meter.images_per_sec,
        "devices": self.parallel.num_devices, "processes": jax.process_count(),
        "backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
        "dtype": config.dtype, "parallel": config.parallel, "jax_version": jax.__version__,
        "python": platform.python_version(), "seed": config.seed}
    self.writer.write_json("summary.json", summary)
    self.writer.log(f"Accuracy on {self.eval_spec} ({evaluation['eval_count']} images): "
                    f"{evaluation['eval_accuracy']:.2%}{tta_note(evaluation, config)}; "
                    f"eval loss {evaluation['eval_loss']:.4f}; {self.num_params:,} parameters")
    return summary
