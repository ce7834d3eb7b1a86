"""The top classes of image files by a trained run, and optionally its attention over them.

    python -m jax_attn.predict --workdir=runs/vit_notebook cat.jpg dog.png [--top_k=3]
        [--attention_map=att.png] [--json] [--flip | --noflip]

Each file (any format Pillow reads; grayscale and RGBA become RGB) is resized to the run's
image size as ``--image_folder`` data is (bilinear, aspect ratio not kept), normalised as in
training and classified with the run's test-time views (``--noflip``: the plain image only).
One line per image, e.g. ``cat.jpg: cat 91.2 %, dog 5.1 %, frog 1.0 %``; a line on stderr says
which checkpoint answered. Bad input: one line on stderr and exit status 2.
"""
from __future__ import annotations

import functools
import json
import sys
import types
from pathlib import Path
from typing import Any, Callable

import numpy as np
from absl import app, flags, logging

from jax_attn import attention_maps, configs, inference
from jax_attn.data.image_folder import decode
from jax_attn.errors import UserError

def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> types.SimpleNamespace:
  """Defines predict's flags in ``flag_values`` (importing this module defines none)."""
  fv = {"flag_values": flag_values}
  return types.SimpleNamespace(
      workdir=flags.DEFINE_string("workdir", None, "Workdir of a run of python -m jax_attn.main.",
                                  **fv),
      top_k=flags.DEFINE_integer("top_k", 3, "Classes to print per image.", **fv),
      attention_map=flags.DEFINE_string(
          "attention_map", None, "Draw the attention over each image to this PNG (several "
          "images: OUT_0.png, OUT_1.png, ... in argument order).", **fv),
      json=flags.DEFINE_bool("json", False, "Print one JSON object per image instead of text.",
                             **fv),
      flip=flags.DEFINE_bool("flip", None, "Test-time flip on (with the run's translated views) "
                             "or off (--noflip: the plain image alone); default: as the run "
                             "evaluated.", **fv))


def load_images(paths: list[str], size: int) -> np.ndarray:
  """uint8 ``[N, size, size, 3]``: each file decoded and resized as ``--image_folder`` data is."""
  for path in paths:
    if not Path(path).is_file():
      raise UserError(f"image {path} does not exist or is not a file")
  return np.stack([decode(Path(path), size) for path in paths])


def map_paths(out: str, count: int) -> list[Path]:
  """``OUT.png`` for one image; ``OUT_0.png``, ``OUT_1.png``, ... for several."""
  path = Path(out)
  return [path] if count == 1 else [path.with_name(f"{path.stem}_{i}{path.suffix}")
                                    for i in range(count)]


def predict(workdir: str, paths: list[str], top_k: int = 3, flip: bool | None = None,
            attention_map: str | None = None, log: Callable[[str], None] = lambda _: None
            ) -> list[dict[str, Any]]:
  """Per image: ``{"image", "top_k": [{"class", "label", "probability"}, ...]}`` (most probable
  first), and ``"attention_map"`` (the PNG written) with ``attention_map``."""
  if not paths:
    raise UserError("give one or more image files: python -m jax_attn.predict --workdir=RUN "
                    "IMAGE...")
  if top_k < 1:
    raise UserError(f"--top_k={top_k} must be at least 1")
  trained = inference.load(workdir)
  config = trained.config
  images = load_images(paths, trained.image_size)
  shift = config.eval_translate if flip is not False else 0
  flip = config.eval_flip if flip is None else flip
  layers = trained.attention(images) if attention_map is not None else []
  if attention_map is not None and not layers:
    raise UserError(f"the model of {workdir} ({configs.describe(config)}) has no attention "
                    "layers: leave out --attention_map")
  logits = trained.logits(images, flip=flip, shift=shift)
  views = "plain images" if not (flip or shift) else (
      "test-time views: " + " and ".join(["flip"] * flip + [f"+-{shift} px"] * bool(shift)))
  log(f"{workdir}: {configs.describe(config)}, checkpoint at step {trained.step}; images resized "
      f"to {trained.image_size}x{trained.image_size}; {views}")
  probabilities = np.exp(logits - logits.max(-1, keepdims=True))
  probabilities /= probabilities.sum(-1, keepdims=True)
  results = []
  for path, p in zip(paths, probabilities):
    best = np.argsort(-p, kind="stable")[:top_k]
    results.append({"image": path, "top_k": [{"class": trained.class_names[i], "label": int(i),
                                              "probability": float(p[i])} for i in best]})
  if attention_map is not None:
    for i, (result, out) in enumerate(zip(results, map_paths(attention_map, len(paths)))):
      out.parent.mkdir(parents=True, exist_ok=True)
      top = result["top_k"][0]
      attention_maps.draw(config.model_name, images[i], [w[i] for w in layers], out,
                          title=f"{top['class']} {top['probability']:.0%}")
      result["attention_map"] = str(out)
  return results


def format_line(result: dict[str, Any]) -> str:
  """``cat.jpg: cat 91.2 %, dog 5.1 %, frog 1.0 %``."""
  return f"{result['image']}: " + ", ".join(
      f"{c['class']} {100 * c['probability']:.1f} %" for c in result["top_k"])


def main(argv: list[str], cli: types.SimpleNamespace) -> None:
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
  try:
    if not cli.workdir.value:
      raise UserError("give the run to use: --workdir=RUN (a directory written by "
                      "python -m jax_attn.main)")
    results = predict(cli.workdir.value, argv[1:], cli.top_k.value, cli.flip.value,
                      cli.attention_map.value, log=lambda line: print(line, file=sys.stderr))
  except UserError as e:
    sys.stderr.write(f"jax_attn.predict: error: {e}\n")
    sys.exit(2)
  for result in results:
    print(json.dumps(result) if cli.json.value else format_line(result))
    if "attention_map" in result and not cli.json.value:
      print(f"wrote {result['attention_map']}", file=sys.stderr)


def run() -> None:
  app.run(functools.partial(main, cli=define_flags()))


if __name__ == "__main__":
  run()
