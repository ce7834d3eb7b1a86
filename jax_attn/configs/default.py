"""The one schema: every setting of a run, its default, its help and its command-line flag.

``get_config()`` returns these defaults as an ``ml_collections.ConfigDict``; the recipe files
beside this one (``sa_cnn.py``, ``vit.py``) start from it, ``jax_attn.main`` generates its
``--flags`` from ``SETTINGS``, and ``jax_attn.config.validate`` checks a resolved config.
Adding a setting = one ``Setting`` here (plus its README row); the model's own
hyper-parameters are the fields of its Flax module (``config.model``, see ``models.py``).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections
from ml_collections import config_dict

from jax_attn.attention import ATTENTION_IMPLS
from jax_attn.augment import NORMALIZATIONS
from jax_attn.optim import OPTIMIZERS, SCHEDULES
from jax_attn.parallel import CPU_KERNELS, PARALLEL_MODES


@dataclasses.dataclass(frozen=True)
class Setting:
  """One setting: dotted ``path`` in the config, default, help, and its flag.

  ``kind`` is the value type (needed when the default is None); ``choices`` are the only
  allowed values (checked by ``validate``); ``flag`` is the ``--flag`` name (by default the
  path with dots as underscores; None: no flag of its own, set it with ``--config.PATH``).
  """
  path: str
  default: Any
  help: str
  kind: type | None = None
  choices: tuple[str, ...] = ()
  flag: str | None = ""

  @property
  def flag_name(self) -> str | None:
    return self.path.replace(".", "_") if self.flag == "" else self.flag

  @property
  def value_type(self) -> type:
    return self.kind or type(self.default)


DTYPES = ("float32", "bfloat16")

SETTINGS: tuple[Setting, ...] = (
    # What is trained (the model's hyper-parameters are config.model.*).
    Setting("model_name", "sa_cnn", "Model family: sa_cnn or vit (the --model shorthand picks the "
            "packaged recipe file).", choices=("sa_cnn", "vit"), flag=None),
    Setting("recipe", "custom", "Name of the recipe (the --recipe shorthand picks it from the "
            "packaged file); names the default workdir.", flag=None),
    Setting("preset", "seed", "Named architecture config.model started from (models.PRESETS); "
            "--preset=NAME replaces config.model by that preset."),
    Setting("num_classes", 10, "Number of classes of the data."),
    Setting("image_size", None, "Image side the model was built for; filled from the data.",
            kind=int, flag=None),
    # Optimisation.
    Setting("epochs", 10, "Training epochs."),
    Setting("batch_size", 64, "Global batch size, across all devices and processes."),
    Setting("learning_rate", 1e-3, "Peak learning rate."),
    Setting("optimizer", "adam", "Optimizer (sgd = Nesterov momentum; muon = Muon on the "
            "convolution filters, sgd for the rest).", choices=OPTIMIZERS),
    Setting("schedule", "constant", "Learning-rate schedule.", choices=SCHEDULES),
    Setting("warmup_epochs", 0.0, "Warm-up epochs of --schedule=warmup_cosine or warmup_linear."),
    Setting("lr_warmup_start", 0.2, "warmup_linear: the learning rate at step 0, as a fraction of "
            "the peak."),
    Setting("lr_final", 0.07, "warmup_linear: the learning rate at the last step, as a fraction "
            "of the peak."),
    Setting("weight_decay", 0.0, "Weight decay (decoupled for adamw)."),
    Setting("momentum", 0.9, "Nesterov momentum for --optimizer=sgd (and muon's other "
            "parameters)."),
    Setting("muon_learning_rate", 0.24, "--optimizer=muon: the peak rate of the convolution "
            "filters (Muon, schedule-shaped); every other parameter: SGD at --learning_rate."),
    Setting("muon_momentum", 0.6, "--optimizer=muon: the filters' Nesterov momentum."),
    Setting("bias_lr_scale", 1.0, "Learning-rate multiplier of batch-norm biases; their weight "
            "decay is divided by it (the same decay per step)."),
    Setting("whiten_bias_epochs", 3.0, "Epochs the whitening layer's bias trains (its filters, "
            "computed from the training images, never do); models with stem='whiten'."),
    Setting("lookahead_every_steps", 0, "Lookahead/EMA of the weights every N steps (0 = off): "
            "weights = slow = rho*slow + (1-rho)*weights, rho = decay^N * progress^3."),
    Setting("lookahead_decay", 0.95, "Per-step decay of --lookahead_every_steps."),
    Setting("grad_clip_norm", 0.0, "Clip gradients to this global norm; 0 = off."),
    Setting("label_smoothing", 0.0, "Label smoothing of the cross-entropy."),
    Setting("seed", 0, "Seed of every random choice (init, data order, augmentation, dropout)."),
    # How it runs.
    Setting("parallel", None, "Data parallelism; unset: pmap with several devices, else none.",
            kind=str, choices=PARALLEL_MODES),
    Setting("dtype", "float32", "Compute dtype (params, softmax and loss stay float32).",
            choices=DTYPES),
    Setting("attention_impl", "einsum", "einsum = the explicit reference core; chunked = the same "
            "core one image at a time, recomputed for the gradient (fastest SA-CNN on CPU); fused = "
            "jax.nn.dot_product_attention; flash = JAX's Pallas flash-attention kernel on GPUs (no "
            "N x N scores in memory; chunked elsewhere). chunked/fused/flash sow no weights.", choices=ATTENTION_IMPLS),
    Setting("cpu_kernels", "ynnpack", "On a CPU backend: ynnpack hands dots/convolutions to XLA's "
            "YNNPACK library; xla uses XLA's own kernels.", choices=CPU_KERNELS),
    Setting("max_steps", None, "Stop after this many steps (smoke runs).", kind=int),
    # Evaluation, checkpoints, logs.
    Setting("eval_every_epochs", 1, "Evaluate every N epochs (and always at the end)."),
    Setting("eval_flip", False, "Evaluate with flip test-time augmentation (mean logits of each "
            "image and its mirror image); the accuracy without it is recorded too."),
    Setting("eval_translate", 0, "Test-time views moved by +-N pixels (reflect padding), weight "
            "1/4 each against 1/2 for the unmoved view; with --eval_flip each view and its mirror "
            "image. 0 = off."),
    Setting("checkpoint_every_steps", 500, "Checkpoint every N steps (and at every epoch end)."),
    Setting("keep_checkpoints", 3, "How many recent checkpoints to keep."),
    Setting("log_every_steps", 50, "Log a metrics record every N steps."),
    Setting("steps_per_call", 1, "K > 1: the splits stay on the devices and each dispatch runs "
            "K train steps (one fori_loop), ending early at log, checkpoint and epoch boundaries; "
            "evaluation is one dispatch. Same batches in the same order as K = 1."),
    # On-device preprocessing and augmentation.
    Setting("augment.normalization", "reference", "reference = (x/255-0.5)/0.5; mean_std = CIFAR-10 "
            "channel statistics.", choices=NORMALIZATIONS, flag="normalization"),
    Setting("augment.crop_padding", 0, "Random crop after reflect padding by N pixels; 0 = off."),
    Setting("augment.flip", False, "Random horizontal flips."),
    Setting("augment.alternating_flip", False, "With --augment_flip: each example's flip is a "
            "coin drawn once (seed, example) and inverted every epoch, so it is mirrored in exactly "
            "one of any two consecutive epochs."),
    Setting("augment.cutout", 0, "Cutout square side in pixels; 0 = off."),
    # Data: exactly one source.
    Setting("data.dataset", None, "tfds dataset name (default cifar10 when no other source is "
            "given).", kind=str, flag="dataset"),
    Setting("data.data_dir", None, "tfds data directory (default: tfds's own, or $TFDS_DATA_DIR).",
            kind=str, flag="data_dir"),
    Setting("data.image_folder", None, "Offline source: PATH/<split>/<class>/*.png|jpg.", kind=str,
            flag="image_folder"),
    Setting("data.cifar_archive", None, "Offline source: cifar-10-python.tar.gz or "
            "cifar-10-batches-py/.", kind=str, flag="cifar_archive"),
    Setting("data.synthetic", False, "Deterministic learnable synthetic data (tests, benchmarks).",
            flag="synthetic"),
    Setting("data.synthetic_size", 1024, "Training examples of --synthetic (eval: a fifth).",
            flag="synthetic_size"),
    Setting("data.image_size", None, "Resize image-folder images to NxN (synthetic: their size).",
            kind=int, flag="image_size"),
    Setting("data.train_split", None, "Training split in tfds syntax, e.g. train[:45000].",
            kind=str, flag="train_split"),
    Setting("data.eval_split", None, "Evaluation split, e.g. test or train[45000:].", kind=str,
            flag="eval_split"),
)


def get_config() -> ml_collections.ConfigDict:
  """Every setting at its default; ``config.model`` empty (a recipe file fills it)."""
  config = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict()
  for setting in SETTINGS:
    parent = config
    *groups, name = setting.path.split(".")
    for group in groups:
      if group not in parent:
        parent[group] = ml_collections.ConfigDict()
      parent = parent[group]
    parent[name] = (config_dict.placeholder(setting.value_type) if setting.default is None
                    else setting.default)
  return config


def for_model(model_name: str, preset: str = "seed") -> ml_collections.ConfigDict:
  """The defaults with ``config.model`` set to ``model_name``'s named architecture ``preset``."""
  from jax_attn import models  # pylint: disable=g-import-not-at-top  (models import jax)
  config = get_config()
  config.model_name, config.preset = model_name, preset
  config.model = models.hyperparameters(model_name, preset)
  return config


def pick(recipes: dict, model_name: str, recipe: str) -> ml_collections.ConfigDict:
  """``recipes[recipe]()``; a ValueError naming the choices otherwise. An alias (``tuned``) is
  named after the recipe it stands for (``tuned_v2``), so that a run's config.json says which
  recipe ran even after the alias moves on."""
  if recipe not in recipes:
    raise ValueError(f"--recipe={recipe} is unknown for {model_name}: use one of "
                     f"{', '.join(recipes)}")
  make = recipes[recipe]
  config = make()
  config.recipe = make.__name__ if recipes.get(make.__name__) is make else recipe
  return config
