"""The schema: every setting of a run, declared once, with its default, type, choices, valid
range, help and command-line flag.

``get_config()`` returns the defaults as an ``ml_collections.ConfigDict``; the recipe files
beside this one start from it, ``jax_attn.main`` generates its ``--flags`` from ``SETTINGS``
and ``jax_attn.configs.validate`` checks a config against it. The model's hyper-parameters are
the fields of its Flax module (``config.model``), checked by the module itself.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

import ml_collections
from ml_collections import config_dict


@dataclasses.dataclass(frozen=True)
class Setting:
  """One setting: its dotted ``path`` in the config, default and help.

  ``kind``: the value type where the default is None. ``choices``: the only values allowed.
  ``valid``: the allowed range, ``> N``, ``>= N`` or an interval such as ``[0, 1)``. ``flag``: the
  ``--flag`` name (default: the path with dots as underscores; None: set it with
  ``--config.PATH`` only).
  """
  path: str
  default: Any
  help: str
  kind: type | None = None
  choices: tuple[str, ...] = ()
  valid: str = ""
  flag: str | None = ""

  @property
  def flag_name(self) -> str | None:
    return self.path.replace(".", "_") if self.flag == "" else self.flag

  @property
  def value_type(self) -> type:
    return self.kind or type(self.default)

  def problem(self, value: Any) -> str | None:
    """Why ``value`` is not allowed (``must be ...``), or None."""
    if value is None:
      return None
    if self.choices and value not in self.choices:
      return f"is unknown: use one of {', '.join(self.choices)}"
    match = re.fullmatch(r"(>=?) (\S+)|([\[(])(\S+), (\S+)([\])])", self.valid)
    if not match:
      return None
    if match[1] == ">":
      ok = value > float(match[2])
      wanted = "positive" if float(match[2]) == 0 else f"greater than {match[2]}"
    elif match[1]:
      ok = value >= float(match[2])
      wanted = f"at least {match[2]}"
    else:
      low, high = float(match[4]), float(match[5])
      ok = (low < value if match[3] == "(" else low <= value) and (
          value < high if match[6] == ")" else value <= high)
      wanted = f"in {self.valid}"
    return None if ok else f"must be {wanted}"


SETTINGS: tuple[Setting, ...] = (
    # What is trained (the model's hyper-parameters are config.model.*).
    Setting("model_name", "sa_cnn", "Model family (--model picks its packaged recipe file).",
            flag=None),
    Setting("recipe", "custom", "Name of the recipe (--recipe picks a packaged one); names the "
            "default workdir.", flag=None),
    Setting("num_classes", 10, "Number of classes of the data.", valid=">= 1"),
    Setting("image_size", None, "Image side: image-folder images are resized to it, synthetic "
            "images made at it; unset: the data's own (recorded in config.json).", kind=int,
            valid=">= 1"),
    Setting("class_names", None, "The data's class names in label order (recorded from the "
            "data).", kind=tuple, flag=None),
    # Optimisation.
    Setting("epochs", 10, "Training epochs.", valid=">= 1"),
    Setting("batch_size", 64, "Global batch size, across all devices and processes.",
            valid=">= 1"),
    Setting("learning_rate", 1e-3, "Peak learning rate.", valid="> 0"),
    Setting("optimizer", "adam", "adam, adamw, sgd (Nesterov) or muon (Muon on the 3x3 "
            "convolution filters, sgd for the rest).", choices=("adam", "adamw", "sgd", "muon")),
    Setting("schedule", "constant", "Learning-rate schedule: constant, warmup_cosine (from 0, "
            "cosine to 0) or warmup_linear (from --lr_warmup_start, linear to --lr_final).",
            choices=("constant", "warmup_cosine", "warmup_linear")),
    Setting("warmup_epochs", 0.0, "Warm-up epochs of warmup_cosine and warmup_linear.",
            valid=">= 0"),
    Setting("lr_warmup_start", 0.2, "warmup_linear: the rate at step 0, as a fraction of the "
            "peak.", valid=">= 0"),
    Setting("lr_final", 0.07, "warmup_linear: the rate at the last step, as a fraction of the "
            "peak.", valid=">= 0"),
    Setting("weight_decay", 0.0, "Weight decay (decoupled for adamw).", valid=">= 0"),
    Setting("momentum", 0.9, "Nesterov momentum of sgd (and of muon's other parameters).",
            valid="[0, 1)"),
    Setting("muon_learning_rate", 0.24, "muon: the filters' peak rate (schedule-shaped, no "
            "weight decay).", valid="> 0"),
    Setting("muon_momentum", 0.6, "muon: the filters' Nesterov momentum.", valid="[0, 1)"),
    Setting("bias_lr_scale", 1.0, "Learning-rate multiplier of batch-norm biases; their weight "
            "decay is divided by it (the same decay per step).", valid="> 0"),
    Setting("whiten_bias_epochs", 3.0, "Epochs the whitening layer's bias trains (its filters, "
            "computed from the training images, never do).", valid=">= 0"),
    Setting("lookahead_every_steps", 0, "Every N steps the weights become slow = rho * slow + "
            "(1 - rho) * weights, rho = decay^N * progress^3 (0 = off).", valid=">= 0"),
    Setting("lookahead_decay", 0.95, "Per-step decay of the lookahead.", valid="[0, 1]"),
    Setting("grad_clip_norm", 0.0, "Clip gradients to this global norm (0 = off).",
            valid=">= 0"),
    Setting("label_smoothing", 0.0, "Label smoothing of the cross-entropy.", valid="[0, 1)"),
    Setting("seed", 0, "Seed of every random choice: init, data order, augmentation, dropout."),
    # How it runs.
    Setting("parallel", None, "Data parallelism; unset: pmap with several devices, else none.",
            kind=str, choices=("none", "pmap", "shard_map")),
    Setting("dtype", "float32", "Compute dtype (parameters, softmax and loss stay float32).",
            choices=("float32", "bfloat16")),
    Setting("attention_impl", "einsum", "einsum (the explicit core; sows the weights), chunked "
            "(the same core one image at a time: the fastest SA-CNN on a CPU) or flash (the "
            "Pallas flash-attention kernel on GPUs: no N x N scores in memory; chunked "
            "elsewhere).", choices=("einsum", "chunked", "flash")),
    Setting("cpu_kernels", "ynnpack", "CPU backend: ynnpack (XLA hands dots and convolutions "
            "to YNNPACK) or xla (XLA's own kernels).", choices=("ynnpack", "xla")),
    Setting("max_steps", None, "Stop after this many steps (smoke runs).", kind=int,
            valid=">= 1"),
    Setting("steps_per_call", 1, "K > 1: the splits stay on the devices and each dispatch runs "
            "up to K train steps; the same batches in the same order as K = 1.", valid=">= 1"),
    # Evaluation, checkpoints, logs.
    Setting("eval_every_epochs", 1, "Evaluate every N epochs (and always at the end).",
            valid=">= 1"),
    Setting("eval_flip", False, "Test-time flip: mean logits of each image and its mirror "
            "image (the accuracy without it is recorded too)."),
    Setting("eval_translate", 0, "Test-time views moved by +-N pixels (weight 1/4 each, 1/2 "
            "for the unmoved one), each with its mirror image under --eval_flip.",
            valid=">= 0"),
    Setting("checkpoint_every_steps", 500, "Checkpoint every N steps (and at every epoch end).",
            valid=">= 1"),
    Setting("keep_checkpoints", 3, "How many recent checkpoints to keep.", valid=">= 1"),
    Setting("log_every_steps", 50, "One metrics record every N steps.", valid=">= 1"),
    # On-device preprocessing and augmentation.
    Setting("augment.normalization", "reference", "reference: (x/255 - 0.5) / 0.5; mean_std: "
            "CIFAR-10's channel statistics.", choices=("reference", "mean_std"),
            flag="normalization"),
    Setting("augment.crop_padding", 0, "Random crops after reflect padding by N pixels.",
            valid=">= 0"),
    Setting("augment.flip", False, "Random horizontal flips."),
    Setting("augment.alternating_flip", False, "With --augment_flip: each example's flip is "
            "drawn once and inverted every epoch (mirrored in one of any two epochs)."),
    # Data: exactly one source.
    Setting("data.dataset", None, "tfds dataset (cifar10 when no other source is given).",
            kind=str, flag="dataset"),
    Setting("data.data_dir", None, "tfds data directory (default: tfds's, or $TFDS_DATA_DIR).",
            kind=str, flag="data_dir"),
    Setting("data.image_folder", None, "Offline source: PATH/<split>/<class>/*.png|jpg.",
            kind=str, flag="image_folder"),
    Setting("data.cifar_archive", None, "Offline source: cifar-10-python.tar.gz or "
            "cifar-10-batches-py/.", kind=str, flag="cifar_archive"),
    Setting("data.synthetic", False, "Deterministic learnable synthetic data (tests, smoke "
            "runs).", flag="synthetic"),
    Setting("data.synthetic_size", 1024, "Training examples of --synthetic (a fifth as many "
            "test examples).", valid=">= 1", flag="synthetic_size"),
    Setting("data.train_split", None, "Training split in tfds syntax, e.g. train[:45000].",
            kind=str, flag="train_split"),
    Setting("data.eval_split", None, "Evaluation split, e.g. test or train[45000:].", kind=str,
            flag="eval_split"),
)


SETTING = {setting.path: setting for setting in SETTINGS}


def get_config() -> ml_collections.ConfigDict:
  """Every setting at its default; ``config.model`` empty (a recipe fills it)."""
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
