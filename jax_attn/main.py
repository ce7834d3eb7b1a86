"""Command line: ``python -m jax_attn.main --model=sa_cnn`` (or ``--model=vit``).

Flags are read here and nowhere else; a flag left unset takes the recipe's value.
"""
from __future__ import annotations

import ast
import os
import sys

from absl import app, flags, logging

from jax_attn import attention, augment, distributed, optim, parallel
from jax_attn.datasets import DataConfig
from jax_attn.errors import UserError

_MODEL = flags.DEFINE_enum("model", "sa_cnn", ["sa_cnn", "vit"], "Model family.")
_RECIPE = flags.DEFINE_string("recipe", "seed", "Named recipe giving every default (seed = the reference notebook).")
_PRESET = flags.DEFINE_string("preset", None, "Model preset (seed, tiny); default: the recipe's.")
_MODEL_ARG = flags.DEFINE_multi_string("model_arg", [], "Model hyper-parameter override KEY=VALUE, e.g. --model_arg=depth=6 (repeatable).")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", None, "Number of classes (default 10).")
_EPOCHS = flags.DEFINE_integer("epochs", None, "Training epochs.")
_BATCH = flags.DEFINE_integer("batch_size", None, "Global batch size, across all devices and processes.")
_LR = flags.DEFINE_float("learning_rate", None, "Peak learning rate.")
_OPTIMIZER = flags.DEFINE_enum("optimizer", None, optim.OPTIMIZERS, "Optimizer.")
_SCHEDULE = flags.DEFINE_enum("schedule", None, optim.SCHEDULES, "Learning-rate schedule.")
_WARMUP = flags.DEFINE_float("warmup_epochs", None, "Warm-up epochs for --schedule=warmup_cosine.")
_WD = flags.DEFINE_float("weight_decay", None, "Weight decay (decoupled for adamw).")
_MOMENTUM = flags.DEFINE_float("momentum", None, "Nesterov momentum for --optimizer=sgd.")
_CLIP = flags.DEFINE_float("grad_clip_norm", None, "Clip gradients to this global norm; 0 = off.")
_SMOOTHING = flags.DEFINE_float("label_smoothing", None, "Label smoothing of the cross-entropy.")
_SEED = flags.DEFINE_integer("seed", None, "Seed of every random choice (init, data order, augmentation, dropout).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output and checkpoint directory; rerunning in it resumes. Default runs/MODEL_RECIPE.")
_PARALLEL = flags.DEFINE_enum("parallel", None, parallel.PARALLEL_MODES, "Data parallelism; default pmap with several devices, else none.")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Compute dtype (params, softmax and loss stay float32).")
_ATTENTION_IMPL = flags.DEFINE_enum("attention_impl", None, attention.ATTENTION_IMPLS, "einsum = the explicit reference core; chunked = the same core one image at a time, recomputed for the gradient (fastest SA-CNN on CPU); fused = jax.nn.dot_product_attention. chunked/fused sow no weights.")
_CPU_KERNELS = flags.DEFINE_enum("cpu_kernels", None, parallel.CPU_KERNELS, "On a CPU backend: ynnpack (default) hands dots/convolutions to XLA's YNNPACK library; xla uses XLA's own kernels.")
_MAX_STEPS = flags.DEFINE_integer("max_steps", None, "Stop after this many steps (smoke runs).")
_EVAL_FLIP = flags.DEFINE_boolean("eval_flip", None, "Evaluate with flip test-time augmentation (mean logits of each image and its mirror image); the accuracy without it is recorded too. On in the tuned recipe.")
_EVAL_EVERY = flags.DEFINE_integer("eval_every_epochs", None, "Evaluate every N epochs (and always at the end).")
_CKPT_EVERY = flags.DEFINE_integer("checkpoint_every_steps", None, "Checkpoint every N steps (and at every epoch end).")
_KEEP = flags.DEFINE_integer("keep_checkpoints", None, "How many recent checkpoints to keep.")
_LOG_EVERY = flags.DEFINE_integer("log_every_steps", None, "Log a metrics record every N steps.")
_DISTRIBUTED = flags.DEFINE_boolean("distributed", False, "Join a multi-process job via jax.distributed (auto-detects SLURM / Cloud TPU when no coordinator is given).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 for --distributed (launch.sh sets $JAX_ATTN_COORDINATOR).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job (launch.sh sets $JAX_ATTN_NUM_PROCESSES).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's id, 0..N-1 (launch.sh sets $JAX_ATTN_PROCESS_ID).")
_NUM_CPU_DEVICES = flags.DEFINE_integer("num_cpu_devices", None, "Split the CPU into N devices (for trying data parallelism without accelerators).")
# Data.
_DATASET = flags.DEFINE_string("dataset", None, "tfds dataset name (default cifar10 when no other source is given).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data directory (default: tfds's own, or $TFDS_DATA_DIR).")
_IMAGE_FOLDER = flags.DEFINE_string("image_folder", None, "Offline source: PATH/<split>/<class>/*.png|jpg.")
_ARCHIVE = flags.DEFINE_string("cifar_archive", None, "Offline source: cifar-10-python.tar.gz or cifar-10-batches-py/.")
_SYNTHETIC = flags.DEFINE_boolean("synthetic", False, "Deterministic learnable synthetic data (tests, benchmarks).")
_SYNTHETIC_SIZE = flags.DEFINE_integer("synthetic_size", 1024, "Training examples of --synthetic (eval: a fifth).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", None, "Resize image-folder images to NxN (synthetic: their size).")
_TRAIN_SPLIT = flags.DEFINE_string("train_split", None, "Training split in tfds syntax, e.g. train[:45000].")
_EVAL_SPLIT = flags.DEFINE_string("eval_split", None, "Evaluation split, e.g. test or train[45000:].")
# Augmentation (on device).
_NORMALIZATION = flags.DEFINE_enum("normalization", None, augment.NORMALIZATIONS, "reference = (x/255-0.5)/0.5; mean_std = CIFAR-10 channel statistics.")
_CROP = flags.DEFINE_integer("augment_crop_padding", None, "Random crop after reflect padding by N pixels; 0 = off.")
_FLIP = flags.DEFINE_boolean("augment_flip", None, "Random horizontal flips.")
_CUTOUT = flags.DEFINE_integer("augment_cutout", None, "Cutout square side in pixels; 0 = off.")


def _model_overrides() -> dict:
  overrides = {}
  for item in _MODEL_ARG.value:
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise UserError(f"--model_arg={item} is not KEY=VALUE, e.g. --model_arg=depth=6")
    try:
      overrides[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      overrides[key] = value
  return overrides


def build_config():
  """All flags -> a resolved, validated TrainConfig."""
  import jax  # pylint: disable=g-import-not-at-top  (after --num_cpu_devices is applied)
  from jax_attn import config as config_lib  # pylint: disable=g-import-not-at-top
  data = DataConfig(
      dataset=_DATASET.value, data_dir=_DATA_DIR.value, image_folder=_IMAGE_FOLDER.value,
      cifar_archive=_ARCHIVE.value, synthetic=_SYNTHETIC.value,
      synthetic_size=_SYNTHETIC_SIZE.value, image_size=_IMAGE_SIZE.value,
      train_split=_TRAIN_SPLIT.value, eval_split=_EVAL_SPLIT.value)
  mode = _PARALLEL.value or ("pmap" if jax.device_count() > 1 else "none")
  return config_lib.resolve(
      _MODEL.value, _RECIPE.value, preset=_PRESET.value, model_overrides=_model_overrides() or None,
      num_classes=_NUM_CLASSES.value, image_size=_IMAGE_SIZE.value, epochs=_EPOCHS.value,
      batch_size=_BATCH.value, learning_rate=_LR.value, optimizer=_OPTIMIZER.value,
      schedule=_SCHEDULE.value, warmup_epochs=_WARMUP.value, weight_decay=_WD.value,
      momentum=_MOMENTUM.value, grad_clip_norm=_CLIP.value, label_smoothing=_SMOOTHING.value,
      seed=_SEED.value, parallel=mode, dtype=_DTYPE.value, attention_impl=_ATTENTION_IMPL.value,
      cpu_kernels=_CPU_KERNELS.value, max_steps=_MAX_STEPS.value,
      eval_every_epochs=_EVAL_EVERY.value, eval_flip=_EVAL_FLIP.value, checkpoint_every_steps=_CKPT_EVERY.value,
      keep_checkpoints=_KEEP.value, log_every_steps=_LOG_EVERY.value, data=data,
      augment_normalization=_NORMALIZATION.value, augment_crop_padding=_CROP.value,
      augment_flip=_FLIP.value, augment_cutout=_CUTOUT.value)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}: every setting is a --flag")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  if _NUM_CPU_DEVICES.value:
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update("jax_num_cpu_devices", _NUM_CPU_DEVICES.value)
  env_coordinator, env_num, env_id = distributed.settings_from_env()
  coordinator = _COORDINATOR.value or env_coordinator
  num_processes = _NUM_PROCESSES.value if _NUM_PROCESSES.value is not None else env_num
  process_id = _PROCESS_ID.value if _PROCESS_ID.value is not None else env_id
  if _DISTRIBUTED.value or coordinator or num_processes is not None:
    distributed.initialize(coordinator, num_processes, process_id)
  logging.set_verbosity(logging.WARNING)  # orbax is chatty at INFO
  try:
    from jax_attn import trainer  # pylint: disable=g-import-not-at-top
    config = build_config()
    workdir = _WORKDIR.value or f"runs/{config.model}_{config.recipe}"
    trainer.train_and_evaluate(config, workdir)
  except UserError as e:
    sys.stderr.write(f"jax_attn: error: {e}\n")
    sys.exit(2)
  except KeyboardInterrupt:
    sys.stderr.write("jax_attn: interrupted; rerun the same command to resume from the last checkpoint\n")
    sys.exit(130)


if __name__ == "__main__":
  app.run(main)
