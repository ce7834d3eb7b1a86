"""The comparison report on two tiny synthetic runs."""
import pytest
from PIL import Image

from jax_attn import configs
from jax_attn.tools import comparisons, report

from conftest import TINY, tiny


@pytest.mark.slow
def test_report_lists_runs_and_draws_pngs(main_cli, tmp_path):
  runs = []
  for model in ("sa_cnn", "vit"):
    workdir = tmp_path / f"{model}_tiny"
    flip = ["--eval_flip"] if model == "vit" else []
    main_cli([*tiny(model), "--epochs=2", *flip, f"--workdir={workdir}"])
    runs.append(str(workdir))
  path = report.write_report(runs, str(tmp_path / "out"), images=2)
  text = path.read_text()
  batch = next(f for f in TINY if f.startswith("--batch_size=")).split("=")[1]
  assert f"| sa_cnn/tiny | sa_cnn/tiny | {batch}, 0.001 | 3,274 |" in text
  assert f"| vit/tiny | vit/tiny | {batch}, 0.001 | 3,274 |" in text
  assert "| - | vit/conv_tokens = tuned |" + " not run |" * 9 in text  # packaged, not run
  assert text.count("(flip TTA; ") == 1  # the ViT was evaluated with --eval_flip
  pngs = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
  assert "curves.png" in pngs
  assert sum(p.startswith("attention_sa_cnn") for p in pngs) == 2
  assert sum(p.startswith("attention_vit") for p in pngs) == 2
  assert all(Image.open(tmp_path / "out" / p).size[0] > 100 for p in pngs)
  for p in pngs:
    assert f"({p})" in text
  # a run stopped before its summary shows its last evaluated epoch, marked incomplete
  (tmp_path / "vit_tiny" / "summary.json").unlink()
  rows = report.table([report.load_run(tmp_path / "vit_tiny")])
  assert f"| vit/tiny | vit/tiny | {batch}, 0.001 | 3,274 | 2 |" in rows
  assert "incomplete: stopped after epoch 2" in rows and "(flip TTA; " in rows
  vit_row = next(line for line in rows.splitlines() if line.startswith("| vit/tiny |"))
  assert vit_row.endswith("| not recorded (incomplete run) |") and "not run" not in vit_row


@pytest.mark.slow
def test_report_says_why_a_model_without_attention_has_no_maps(main_cli, tmp_path):
  """An ablation without attention layers is tabled, and its maps are 'not drawn' with why."""
  workdir = tmp_path / "sa_cnn_no_attention"
  main_cli([*tiny("sa_cnn"), "--epochs=1", "--config.model.attention_stages=()",
            f"--workdir={workdir}"])
  text = report.write_report([str(workdir)], str(tmp_path / "out"), images=1).read_text()
  assert "| sa_cnn/tiny (sa_cnn_no_attention) | sa_cnn/tiny |" in text
  assert "not drawn: the model of sa_cnn_no_attention (sa_cnn/tiny) has no attention layers" in text
  assert not list((tmp_path / "out").glob("attention_*.png"))
  # --images=0 draws no maps, says so once, and the printed command repeats the setting
  text = report.write_report([str(workdir)], str(tmp_path / "none"), images=0).read_text()
  assert f"--out {tmp_path / 'none'} --images=0`." in text
  assert "not drawn: --images=0 asked for none." in text and "### sa_cnn/tiny" not in text


def test_loss_curve_leaves_out_the_epoch_means():
  records = [{"kind": "window", "step": 4, "train_loss": 2.0},
             {"kind": "window", "step": 8, "train_loss": 1.5},
             {"kind": "epoch", "step": 8, "train_loss": 1.8},  # epoch 1's mean, closing it
             {"kind": "window", "step": 12, "train_loss": 1.2},
             {"kind": "end", "step": 12, "train_loss": 1.2}]
  assert [m["train_loss"] for m in report.loss_windows(records)] == [2.0, 1.5, 1.2]


def test_runs_differing_only_in_seed_are_grouped_with_mean_and_std():
  from pathlib import Path

  def run(seed, accuracy, **overrides):
    config = configs.get_recipe("sa_cnn", "tuned", seed=seed, **overrides)
    return {"config": config, "dir": Path(f"r{seed}{len(overrides)}"),
            "summary": {"eval_accuracy": accuracy, "eval_accuracy_no_flip": accuracy - 0.01,
                        "params": 460362}}

  runs = [run(0, 0.90), run(1, 0.92), run(2, 0.94), run(0, 0.5, learning_rate=1.0),
          run(5, 0.7, log_every_steps=7)]
  text = comparisons.seed_groups(runs)
  rows = [line for line in text.splitlines() if line.startswith("| sa_cnn/airbench |")]
  assert len(rows) == 1  # the learning-rate variant is another recipe; log_every_steps is not
  assert "| 0, 1, 2, 5 |" in rows[0]
  assert "86.50% +- 11.12% (n=4)" in rows[0]  # mean and sample std of 0.90, 0.92, 0.94, 0.70
  assert comparisons.seed_groups(runs[:1]) == ""


def test_recorded_seed_directories_are_named_with_their_group():
  """experiments/results holds a ``seed0`` in every group: labels and file names say which."""
  from pathlib import Path

  assert comparisons.run_name(Path("results/vit_conv_tokens/seed0")) == "vit_conv_tokens/seed0"
  assert comparisons.run_name(Path("runs/vit_v4lk5_10ep_s0")) == "vit_v4lk5_10ep_s0"
  assert comparisons.run_name(Path("runs/seed0_long")) == "seed0_long"


def test_attention_ablation_pairs_a_recipe_with_its_attention_free_twin():
  from pathlib import Path

  def run(recipe, seed, accuracy, **overrides):
    config = configs.get_recipe("sa_cnn", recipe, seed=seed, **overrides)
    return {"config": config, "dir": Path(f"{recipe}{seed}"),
            "summary": {"eval_accuracy": accuracy, "eval_accuracy_no_flip": accuracy - 0.01,
                        "params": 541674 if recipe == "airbench" else 541848}}

  one_seed = [run("airbench", 0, 0.895), run("airbench_noattn", 0, 0.888)]
  text = comparisons.attention_ablation(one_seed)
  assert "89.50% (n=1) with attention, 88.80% (n=1) without; difference +0.70 points" in text
  assert "too few seeds to tell" in text
  close = one_seed + [run("airbench", 1, 0.889), run("airbench_noattn", 1, 0.893)]
  assert "no measurable effect" in comparisons.attention_ablation(close)
  apart = [run("airbench", s, 0.90 + s / 1000) for s in range(3)] + [
      run("airbench_noattn", s, 0.85 + s / 1000) for s in range(3)]
  assert "attention helps (beyond 2 standard errors" in comparisons.attention_ablation(apart)
  assert "Paired by seed" not in text  # one seed a side: nothing to pair
  assert ("Paired by seed (seed 0 +0.70, seed 1 -0.40): +0.15 +- 0.78 points."
          in comparisons.attention_ablation(close))
  unpaired = one_seed + [run("airbench", 1, 0.889), run("airbench_noattn", 2, 0.893)]
  assert "Paired by seed" not in comparisons.attention_ablation(unpaired)  # only seed 0 shared
  other_rate = [run("airbench", 0, 0.9), run("airbench_noattn", 0, 0.8, learning_rate=1.0)]
  assert comparisons.attention_ablation(other_rate) == ""  # another recipe: no pair


def test_accuracy_names_the_test_time_views():
  summary = {"eval_accuracy": 0.9, "eval_accuracy_no_flip": 0.88}
  assert report._accuracy(summary, {"eval_flip": True, "eval_translate": 1}) == (
      "90.00% (6-view TTA; 88.00% without)")
  assert report._accuracy(summary, {"eval_flip": True, "eval_translate": 0}) == (
      "90.00% (flip TTA; 88.00% without)")
  assert report._accuracy({"eval_accuracy": 0.9}, {"eval_flip": False}) == "90.00%"
