"""jax_attn: attention-based CIFAR-10 classifiers (SA-CNN and ViT) in JAX/Flax.

The library in a few names::

    import jax_attn
    config = jax_attn.get_recipe("vit", "conv_tokens")       # a packaged recipe (ConfigDict)
    model = jax_attn.get_model(config)                       # its Flax module
    summary = jax_attn.train_and_evaluate(config, "runs/v")  # train, as python -m jax_attn.main
    trained = jax_attn.load_trained("runs/v")                # model + newest checkpoint
    logits = trained.logits(images)                          # uint8 [B, 32, 32, 3] -> logits
    weights = trained.attention(images)                      # per attention layer
    jax_attn.draw_attention("vit", images[0], [w[0] for w in weights], "maps.png")
    params = jax_attn.from_torch(torch_model.state_dict(), "vit")  # the notebook's weights

Packages: ``models`` (the attention core, SA-CNN, ViT), ``data`` (sources, batches,
augmentation), ``train`` (state, steps, parallelism, optimizers, checkpoints, the loop),
``configs`` (the settings schema and recipes), ``tools`` (benchmarks and reports).
"""
from importlib import metadata

from jax_attn.attention_maps import draw as draw_attention
from jax_attn.configs import get_recipe
from jax_attn.inference import TrainedModel
from jax_attn.inference import load as load_trained
from jax_attn.models import count_params, get_model, init_variables
from jax_attn.models.torch_import import from_torch
from jax_attn.train.loop import train_and_evaluate

__all__ = ["TrainedModel", "count_params", "draw_attention", "from_torch", "get_model",
           "get_recipe", "init_variables", "load_trained", "train_and_evaluate"]

try:
  __version__ = metadata.version("jax_attn")
except metadata.PackageNotFoundError:  # a source tree that was never installed
  __version__ = "0+unknown"
