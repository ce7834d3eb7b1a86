"""The training loop: data, steps, logging, evaluation, checkpoints and exact resume."""
from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

import flax
import jax
import ml_collections
import numpy as np

from jax_attn import config as config_lib
from jax_attn import (augment, checkpoint, data, input_pipeline, models, on_device, optim,
                      run_guard, whitening)
from jax_attn.errors import UserError
from jax_attn.metrics import MetricsWriter
from jax_attn import parallel as parallel_lib
from jax_attn.parallel import Parallel
from jax_attn.train import (Lookahead, create_state, eval_result, evaluate, make_eval_body,
                            make_train_body, with_params)
from jax_attn.train_meter import TrainMeter, tta_note


class NonFiniteLossError(UserError):
  """Training diverged; the last good checkpoint is kept."""


def diverged(what: str, workdir: Path, dtype: str) -> NonFiniteLossError:
  """The one-line error of a diverged run: what happened, the checkpoint kept, what to change.
  bf16 adds float32 to the advice: bf16 runs of the seed SA-CNN have gone NaN on a GPU at a
  step where float32 and other bf16 runs trained normally (experiments/README.md)."""
  advice = "Lower --learning_rate or set --grad_clip_norm"
  if dtype == "bfloat16":
    advice += ", or train in float32 (--dtype=float32)"
  return NonFiniteLossError(f"{what}: stopping; the last good checkpoint in "
                            f"{workdir / 'checkpoints'} is kept. {advice}")


class _Run:
  """The state of one training run: built once, then ``run()``."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: Path):
    self.workdir = workdir
    self.writer = MetricsWriter(workdir)
    config = config_lib.replace(
        config, parallel=config.parallel or ("pmap" if jax.device_count() > 1 else "none"))
    self.parallel = Parallel.create(config.parallel, config.batch_size, config.cpu_kernels)
    self.train_split, self.eval_split, self.train_spec, self.eval_spec = data.load_train_eval(
        config.data, config.num_classes, self.writer.log)
    image_shape = self.train_split.images.shape[1:]
    if config.image_size not in (None, image_shape[0]):
      raise UserError(f"--image_size={config.image_size} but the data is {image_shape[0]}px")
    self.config = config = config_lib.replace(config, image_size=image_shape[0])
    config_lib.validate(config)  # the model's checks, now that the image size is known
    run_guard.prepare_workdir(workdir)
    self.lock = run_guard.WorkdirLock(workdir, self.writer.log)
    try:
      self._build(config, workdir, image_shape)
    except BaseException:
      self.lock.release()
      raise

  def _build(self, config: ml_collections.ConfigDict, workdir: Path,
             image_shape: tuple[int, ...]) -> None:
    checkpoint.check_resumable(workdir, config, self.writer.log)
    run_guard.remove_partial_checkpoints(workdir / "checkpoints", self.writer.log)
    # When the batch is split over devices: batch norm and dropout of the global batch.
    split = {"batch_axis": parallel_lib.AXIS} if config.parallel != "none" else {}
    self.model = config_lib.build_model(config, **split)
    self.steps_per_epoch = input_pipeline.steps_per_epoch(len(self.train_split), config.batch_size)
    full_run = self.steps_per_epoch * config.epochs
    self.end_step = min(full_run, config.max_steps or full_run)
    self.schedule = optim.make_schedule(
        config.schedule, config.learning_rate, full_run,
        round(config.warmup_epochs * self.steps_per_epoch), config.lr_warmup_start, config.lr_final)
    self.host_state, tx = self._initial_state(image_shape)
    self.num_params = models.count_params(self.host_state.params)
    lookahead = (Lookahead(config.lookahead_every_steps, config.lookahead_decay, full_run)
                 if config.lookahead_every_steps else None)
    train_body = make_train_body(self.model, tx, config.augment, config.label_smoothing,
                                 self.steps_per_epoch, lookahead)
    eval_body = make_eval_body(self.model, config.augment, config.eval_flip, config.eval_translate)
    self.train_step = self.parallel.wrap(train_body, donate_state=True)
    self.eval_step = self.parallel.wrap(eval_body, donate_state=False)
    if config.steps_per_call > 1:  # the splits go on the devices in run()
      if jax.default_backend() == "cpu":
        self.writer.log(f"note: --steps_per_call={config.steps_per_call} on a CPU: measured no "
                        "faster for the seed ViT and ~15x slower for convolutions (README); "
                        "use 1 here")
      self.train_call = self.parallel.wrap(on_device.scan_train(train_body), donate_state=True,
                                           replicated=2)
      self.eval_call = self.parallel.wrap(on_device.scan_eval(eval_body), donate_state=False,
                                          replicated=2)
    self.checkpointer = checkpoint.Checkpointer(workdir / "checkpoints", config.keep_checkpoints,
                                                self.writer.log)
    self.meter = TrainMeter(self.writer, self.schedule, config.batch_size, self.end_step)

  def _initial_state(self, image_shape: tuple[int, ...]) -> tuple[Any, Any]:
    """The step-0 train state (whitening filters from the training images) and its optimizer.

    Parameter groups (``optim.param_groups``) are used only when a setting needs them, so
    the optimizer state of other runs keeps the layout their checkpoints were written in.
    """
    config = self.config
    shapes = jax.eval_shape(
        lambda: models.init_variables(self.model, jax.random.key(0), image_shape))
    muon = config.optimizer == "muon"
    groups = optim.param_groups(shapes["params"], shapes.get("batch_stats", {}), filters=muon)
    whiten = optim.WHITEN_KERNEL in jax.tree.leaves(groups)
    tx = optim.make_optimizer(
        config.optimizer, self.schedule, weight_decay=config.weight_decay,
        momentum=config.momentum, grad_clip_norm=config.grad_clip_norm,
        bias_lr_scale=config.bias_lr_scale,
        whiten_bias_steps=round(config.whiten_bias_epochs * self.steps_per_epoch),
        groups=groups if whiten or muon or config.bias_lr_scale != 1.0 else None,
        muon_lr_scale=config.muon_learning_rate / config.learning_rate,
        muon_momentum=config.muon_momentum)
    state = create_state(self.model, tx, config.seed, image_shape,
                         lookahead=bool(config.lookahead_every_steps))
    if whiten:  # the first 5,000 training images, normalised, as airbench does
      images = augment.normalize(self.train_split.images[:5000], config.augment.normalization)
      state = with_params(state, whitening.set_whitening(state.params, np.asarray(images)))
    return jax.device_get(state), tx

  # ---------------------------------------------------------------- checkpoints
  def _checkpoint_tree(self, state: Any) -> dict[str, Any]:
    state_dict = flax.serialization.to_state_dict(state)
    if not state_dict["slow"]:  # no lookahead: the layout of checkpoints written before it
      del state_dict["slow"]
    return {"state": state_dict, **self.meter.checkpoint_tree()}

  def _restore(self) -> None:
    restored = self.checkpointer.restore_latest(self._checkpoint_tree(self.host_state))
    if restored is None:
      return
    step, tree = restored
    self.host_state = flax.serialization.from_state_dict(self.host_state,
                                                         {"slow": {}, **tree["state"]})
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
  def _flush(self, pending: list[tuple[int, Any]], interval_start: float, epoch: int) -> None:
    """Fetches the pending step metrics (one host sync), checks them, logs one record."""
    if not pending:
      return
    steps, values = on_device.per_step(
        [s for s, _ in pending], self.parallel.to_host([m for _, m in pending]))
    for step, metrics in zip(steps, values):
      if not np.isfinite(metrics["loss"]):
        raise diverged(f"the training loss became {float(metrics['loss'])} at step {step}",
                       self.workdir, self.config.dtype)
    self.meter.window(values, pending[-1][0], epoch, time.perf_counter() - interval_start)
    pending.clear()

  def _end_epoch(self, state: Any, epoch: int, step: int) -> dict[str, float] | None:
    record = self.meter.close_epoch(step, epoch)
    evaluation = None
    line = f"Loss: {record['train_loss']:.4f}, Epoch [{epoch + 1}]"
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
      self.eval_data = on_device.resident(self.eval_split, self.parallel)
      self.eval_block = self.parallel.put_batch(
          on_device.eval_block(len(self.eval_split), self.parallel.global_batch))
    sums = self.parallel.to_host(self.eval_call(state, self.eval_data, self.eval_block))
    return eval_result({k: v.item() for k, v in sums.items()})

  # ---------------------------------------------------------------- the loop
  def _calls(self, epoch: int, first: int) -> Any:
    """``(steps, function, arguments after the state)`` of each dispatch of ``epoch`` from
    its step ``first``: one step per batch, or ``--steps_per_call`` steps on resident data."""
    config = self.config
    if config.steps_per_call == 1:
      batches = input_pipeline.train_batches(
          self.train_split, seed=config.seed, epoch=epoch, global_batch=config.batch_size,
          first_step=first)
      return ((1, self.train_step, (batch,))
              for batch in input_pipeline.prefetch(batches, self.parallel.put_batch))
    if not hasattr(self, "train_data"):
      self.train_data = on_device.resident(self.train_split, self.parallel)
    ends = lambda step: on_device.call_end(  # noqa: E731
        step, steps_per_call=config.steps_per_call, steps_per_epoch=self.steps_per_epoch,
        end_step=self.end_step, every=(config.log_every_steps, config.checkpoint_every_steps))
    blocks = on_device.train_blocks(len(self.train_split), seed=config.seed, epoch=epoch,
                                    global_batch=config.batch_size, first_step=first,
                                    steps_per_call=config.steps_per_call, ends=ends)
    return on_device.dispatches(blocks, self.parallel, self.train_call, self.train_data)

  def run(self) -> dict[str, Any]:
    config = self.config
    self._restore()
    self.writer.write_json("config.json", config_lib.to_json(config))
    step = int(self.host_state.step)
    state = self.parallel.replicate(self.host_state)
    self.writer.log(
        f"{config_lib.describe(config)}: {self.num_params:,} parameters; "
        f"{len(self.train_split)} train examples ({self.train_spec}), {len(self.eval_split)} eval "
        f"({self.eval_spec}); {self.steps_per_epoch} steps/epoch; {self.parallel.num_devices} "
        f"{jax.default_backend()} device(s), --parallel={config.parallel}")
    self.writer.start_progress(self.end_step, step)
    evaluation = None
    with run_guard.StopSignals() as signals:
      try:
        while step < self.end_step:
          epoch, first = divmod(step, self.steps_per_epoch)
          pending: list[tuple[int, Any]] = []
          interval_start = time.perf_counter()
          for steps, function, arguments in self._calls(epoch, first):
            state, metrics = function(state, *arguments)
            step += steps
            pending.append((step, metrics))
            epoch_done = step % self.steps_per_epoch == 0
            save_now = step % config.checkpoint_every_steps == 0
            if (step % config.log_every_steps == 0 or save_now or epoch_done
                or step == self.end_step):
              self._flush(pending, interval_start, epoch)
              interval_start = time.perf_counter()
            if epoch_done or step == self.end_step:
              evaluation = self._end_epoch(state, epoch, step) if epoch_done else None
              save_now = True
            if save_now:
              self._save(state, step)
            if step == self.end_step:
              break
            # One process: every step. Several: where they log, so all stop at the same step.
            if jax.process_count() == 1 or step % config.log_every_steps == 0:
              stop = signals.agreed()
              if stop:
                self._flush(pending, interval_start, epoch)
                if not save_now:
                  self._save(state, step)
                raise run_guard.StoppedBySignal(stop, step)
      finally:
        self.writer.close()
        self.checkpointer.close()
    if evaluation is None:
      evaluation = self._evaluate(state)
    return self._summary(evaluation, step)

  def _summary(self, evaluation: dict[str, float], step: int) -> dict[str, Any]:
    config = self.config
    summary = {
        "model": config.model_name, "recipe": config.recipe, "preset": config.preset,
        "params": self.num_params, "epochs": step / self.steps_per_epoch, "steps": step,
        "eval_accuracy": evaluation["eval_accuracy"], "eval_loss": evaluation["eval_loss"],
        "eval_examples": evaluation["eval_count"], "eval_split": self.eval_spec,
        "eval_flip": self.config.eval_flip,
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
  """Trains (resuming from ``workdir`` if it holds checkpoints) and returns the summary."""
  run = _Run(config, Path(workdir))
  try:
    with run_guard.armed_nan_checks():
      return run.run()
  finally:
    run.lock.release()
