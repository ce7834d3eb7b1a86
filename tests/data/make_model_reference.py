"""Writes ``tests/data/model_reference.npz``: what every model of the shipped recipes (and a few
variants no recipe takes) computes, for ``tests/test_model_equivalence.py``.

Per case (a model family, its hyper-parameters and an image size; the resolved
hyper-parameters are stored, so later edits to the recipes do not move the reference): the
parameter tree's paths and shapes, per-leaf sums, sums of squares and first values; eval
logits; train-mode logits (fixed dropout key, batch statistics updated where there is
BatchNorm); per-leaf sums of the gradient of a fixed weighted sum of the train logits; and the
attention weights sown in ``intermediates``. Rerunning it on later code must give the same
file (``--check`` compares without writing).

Run from the repository root: ``python3 tests/data/make_model_reference.py [--check]``.
"""
from __future__ import annotations

import io
import json
import os
import sys
import zipfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jax_attn import configs, models  # noqa: E402

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model_reference.npz")
BATCH = 2
HEAD = 4  # first values of each parameter leaf kept verbatim
TINY = {"sa_cnn": {"widths": (8, 16), "convs_per_stage": (1, 1), "attention_stages": (0, 1)},
        "vit": {"patch_size": 4, "hidden_dim": 16, "num_heads": 2, "mlp_dim": 32, "depth": 1}}


def _recipe(model: str, recipe: str) -> dict:
  return dict(configs.get_recipe(model, recipe).model)


# name: (model, hyper-parameters, image size): every shipped recipe's network at the smallest
# image size that exercises all of its layers (compiling is most of the cost), plus paths no
# recipe takes.
CASES = {
    "sa_cnn/notebook": ("sa_cnn", {}, 16),
    "sa_cnn/tiny": ("sa_cnn", TINY["sa_cnn"], 16),
    "sa_cnn/airbench": ("sa_cnn", _recipe("sa_cnn", "airbench"), 16),
    "sa_cnn/bn_gap_dense": ("sa_cnn", {
        "widths": (40, 80, 160), "convs_per_stage": (2, 2, 2), "pool_stages": (0, 1, 2),
        "attention_stages": (0, 1), "norm": "batch", "head": "gap_dense",
        "attention_scale": "inv_sqrt_dim"}, 16),
    "sa_cnn/tiny_residual_bn": ("sa_cnn", {**TINY["sa_cnn"], "convs_per_stage": (2, 2),
                                           "residual": True, "norm": "batch",
                                           "pool_stages": (0,)}, 16),
    "vit/notebook": ("vit", {}, 32),
    "vit/tiny": ("vit", TINY["vit"], 16),
    "vit/conv_tokens": ("vit", _recipe("vit", "conv_tokens"), 16),
    "vit/cct": ("vit", {**_recipe("vit", "conv_tokens"), "tokenizer": "cct", "local_kernel": 3,
                        "pooling": "class"}, 16),
    "vit/tiny_dropout_pre_class_seq": ("vit", {**TINY["vit"], "depth": 2, "dropout_rate": 0.2,
                                               "norm_position": "pre", "pooling": "class_seq"},
                                       16),
}


def build(case: str) -> tuple[object, dict, int]:
  """The model of ``case``, its hyper-parameters and its image size."""
  name, fields, size = CASES[case]
  return models.get_model(name, **fields), fields, size


def model_from_config(name: str, config_json: str):
  """Rebuilds a stored case's model from its JSON hyper-parameters."""
  return models.get_model(name, **json.loads(config_json))


def _leaves(tree) -> tuple[list[str], list[np.ndarray]]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  paths = ["/".join(str(getattr(k, "key", k)) for k in path) for path, _ in flat]
  return paths, [np.asarray(leaf, np.float64) for _, leaf in flat]


def _stats(prefix: str, tree, head: bool = False) -> dict[str, np.ndarray]:
  paths, leaves = _leaves(tree)
  out = {f"{prefix}_paths": np.array(paths),
         f"{prefix}_shapes": np.array(["x".join(map(str, leaf.shape)) for leaf in leaves]),
         f"{prefix}_sum": np.array([leaf.sum() for leaf in leaves]),
         f"{prefix}_sumsq": np.array([np.square(leaf).sum() for leaf in leaves])}
  if head:
    out[f"{prefix}_head"] = np.stack([np.resize(leaf.reshape(-1), HEAD) for leaf in leaves])
  return out


def compute(model, size: int) -> dict[str, np.ndarray]:
  """Everything recorded for one model at ``size x size`` images."""
  variables = models.init_variables(model, jax.random.key(0), (size, size, 3))
  params = variables["params"]
  state = {k: v for k, v in variables.items() if k != "params"}
  images = jax.random.normal(jax.random.key(1), (BATCH, size, size, 3))
  rngs = {"dropout": jax.random.key(2)}

  def train_logits(p):
    logits, updates = model.apply({"params": p, **state}, images, train=True, rngs=rngs,
                                  mutable=list(state))
    return logits, updates

  def loss(p):
    logits, updates = train_logits(p)
    weights = jax.random.normal(jax.random.key(3), logits.shape)
    return jnp.mean(jnp.sum(logits * weights, axis=-1)), (logits, updates)

  grads, (logits_train, updates) = jax.jit(jax.grad(loss, has_aux=True))(params)
  logits_eval, sown = jax.jit(lambda v: model.apply(v, images, train=False,
                                                    mutable=["intermediates"]))(variables)
  return {**_stats("params", params, head=True), **_stats("grads", grads),
          **_stats("state", updates), **_stats("sown", sown.get("intermediates", {})),
          "eval_logits": np.asarray(logits_eval), "train_logits": np.asarray(logits_train)}


def reference() -> dict[str, np.ndarray]:
  arrays = {}
  for case in CASES:
    model, config, size = build(case)
    arrays[f"{case}/config"] = np.array(json.dumps(config, sort_keys=True, default=list))
    arrays[f"{case}/size"] = np.array(size)
    for key, value in compute(model, size).items():
      arrays[f"{case}/{key}"] = value
  return arrays


def encode(arrays: dict[str, np.ndarray]) -> bytes:
  """An ``.npz`` with fixed member timestamps, so equal arrays give equal bytes."""
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
    for key in sorted(arrays):
      member = io.BytesIO()
      np.lib.format.write_array(member, np.asanyarray(arrays[key]), allow_pickle=False)
      info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
      info.compress_type = zipfile.ZIP_DEFLATED
      archive.writestr(info, member.getvalue())
  return buffer.getvalue()


def main(argv: list[str]) -> int:
  data = encode(reference())
  if "--check" in argv:
    with open(PATH, "rb") as f:
      same = f.read() == data
    print("same file" if same else "DIFFERENT from " + PATH)
    return 0 if same else 1
  with open(PATH, "wb") as f:
    f.write(data)
  print(f"wrote {PATH} ({len(data)} bytes, {len(CASES)} cases)")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
