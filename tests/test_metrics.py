"""MetricsWriter's TensorBoard event files, read back with TensorBoard's own loader, and the
train meter's records."""
import json
import sys
import types

import pytest

pytest.importorskip("tensorboardX")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

from jax_attn.train.metrics import MetricsWriter, TrainMeter  # noqa: E402


def _record(step, epoch, loss, eval_accuracy=None, kind="window", **extra):
  """A record as the trainer writes it: eval values None except on evaluated epoch ends."""
  return {"kind": kind, "step": step, "epoch": epoch, "train_loss": loss, "train_accuracy": 0.5,
          "eval_loss": None if eval_accuracy is None else 1.5, "eval_accuracy": eval_accuracy,
          "learning_rate": 0.01 * step, "images_per_sec": 1000.0 + step, "wall_s": 0.1 * step,
          **extra}


# An epoch is 10 steps, logged every 5: at step 10 the window record, then the epoch's closing
# record (epoch means, eval) at the same step.
RECORDS = [_record(5, 1, 2.0), _record(10, 1, 1.8),
           _record(10, 1, 1.9, eval_accuracy=0.4, eval_accuracy_no_flip=0.38, kind="epoch"),
           _record(15, 2, 1.6), _record(20, 2, 1.4),
           _record(20, 2, 1.5, kind="epoch")]  # no eval at epoch 2


@pytest.fixture(autouse=True)
def _tensorboard_without_tensorflow(monkeypatch):
  """TensorBoard's reader imports TensorFlow when it is installed (~10 s here); this module is
  TensorBoard's own switch to its TF-free stub (no effect once TensorBoard has chosen)."""
  monkeypatch.setitem(sys.modules, "tensorboard.compat.notf",
                      types.ModuleType("tensorboard.compat.notf"))


def _scalars(workdir):
  accumulator = event_accumulator.EventAccumulator(str(workdir / "tensorboard"))
  accumulator.Reload()
  return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
          for tag in accumulator.Tags()["scalars"]}


def _write(workdir, records, resume_step=None):
  writer = MetricsWriter(workdir)
  if resume_step is not None:
    writer.truncate_after(resume_step)
  for record in records:
    writer.write_metrics(record)
  writer.close()
  return writer


def test_event_file_holds_the_records_scalars(tmp_path):
  _write(tmp_path, RECORDS)
  assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 1
  scalars = _scalars(tmp_path)
  assert set(scalars) == {
      "train/loss", "train/accuracy", "train/learning_rate", "train/images_per_sec",
      "epoch/train_loss", "epoch/train_accuracy", "epoch/images_per_sec",
      "eval/loss", "eval/accuracy", "eval/accuracy_no_flip"}
  approx = pytest.approx
  assert scalars["train/loss"] == [(5, 2.0), (10, approx(1.8)), (15, approx(1.6)),
                                   (20, approx(1.4))]
  assert scalars["train/learning_rate"] == [(s, approx(0.01 * s)) for s in (5, 10, 15, 20)]
  assert scalars["train/images_per_sec"] == [(s, 1000.0 + s) for s in (5, 10, 15, 20)]
  assert scalars["epoch/train_loss"] == [(10, approx(1.9)), (20, approx(1.5))]
  # None eval values (every window record, and the unevaluated epoch 2) are not written.
  assert scalars["eval/accuracy"] == [(10, approx(0.4))]
  assert scalars["eval/loss"] == [(10, 1.5)]
  assert scalars["eval/accuracy_no_flip"] == [(10, approx(0.38))]
  # metrics.jsonl is still written, record for record.
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line)["train_loss"] for line in lines] == [r["train_loss"] for r in RECORDS]


def test_resume_hides_the_points_past_the_resumed_step(tmp_path):
  _write(tmp_path, RECORDS)
  # Resumed from the checkpoint at step 10: steps 15 and 20 are trained again.
  _write(tmp_path, [_record(15, 2, 1.0), _record(20, 2, 0.9), _record(20, 2, 0.95, kind="epoch")],
         resume_step=10)
  assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 2
  scalars = _scalars(tmp_path)
  approx = pytest.approx
  assert scalars["train/loss"] == [(5, 2.0), (10, approx(1.8)), (15, 1.0), (20, approx(0.9))]
  assert scalars["epoch/train_loss"] == [(10, approx(1.9)), (20, approx(0.95))]
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line)["step"] for line in lines] == [5, 10, 10, 15, 20, 20]


def test_non_main_process_writes_nothing(tmp_path):
  writer = MetricsWriter(tmp_path / "run")
  writer.is_main = False
  for record in RECORDS:
    writer.write_metrics(record)
  writer.close()
  assert not (tmp_path / "run").exists()


def test_without_tensorboardx_only_metrics_jsonl(tmp_path, monkeypatch, capsys):
  monkeypatch.setitem(sys.modules, "tensorboardX", None)  # as if not installed
  _write(tmp_path, RECORDS)
  assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == len(RECORDS)
  assert not (tmp_path / "tensorboard").exists()
  assert capsys.readouterr().out.count("tensorboardX is not installed") == 1  # said once


def test_torch_is_not_left_hidden(tmp_path):
  _write(tmp_path, RECORDS[:1])
  assert sys.modules.get("torch", "absent") is not None  # importable afterwards if installed


def test_train_meter_means_and_checkpointed_totals(tmp_path):
  """Window records hold their steps' means; the epoch record holds the epoch's (batch-weighted)
  means and the run's images/s; a meter restored from its checkpoint tree carries on the same."""
  writer = MetricsWriter(tmp_path)
  writer.start_progress(4, 0)
  meter = TrainMeter(writer, lambda step: 0.1 * step, batch_size=4, end_step=4)
  meter.window([{"loss": 1.0, "accuracy": 0.25}, {"loss": 3.0, "accuracy": 0.75}], 2, 0, 2.0)
  restored = TrainMeter(writer, lambda step: 0.1 * step, batch_size=4, end_step=4)
  restored.restore(meter.checkpoint_tree())
  for m in (meter, restored):
    m.window([{"loss": 5.0, "accuracy": 1.0}], 3, 0, 2.0)
  closing = [m.close_epoch(3, 0) for m in (meter, restored)]
  writer.close()
  assert closing[0] == closing[1]
  assert closing[0]["train_loss"] == pytest.approx(3.0)
  assert closing[0]["train_accuracy"] == pytest.approx(2.0 / 3)
  assert closing[0]["images_per_sec"] == pytest.approx(12 / 4.0)
  assert closing[0]["wall_s"] == pytest.approx(4.0) and closing[0]["learning_rate"] == 0.2 * 1
  assert meter.sums == {"loss_sum": 0.0, "correct_sum": 0.0, "count": 0.0}
  first = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
  assert (first["train_loss"], first["train_accuracy"], first["images_per_sec"]) == (2.0, 0.5, 4.0)
  assert first["learning_rate"] == pytest.approx(0.1)


def test_a_run_stopped_inside_an_epoch_and_resumed_drops_its_end_record(tmp_path):
  """--max_steps=15 ends inside epoch 2 with an ``end`` record (its evaluation); a rerun goes on
  from the checkpoint at 15, where that record no longer holds."""
  _write(tmp_path, RECORDS[:4] + [_record(15, 2, 1.55, eval_accuracy=0.45, kind="end")])
  assert _scalars(tmp_path)["eval/accuracy"] == [(10, pytest.approx(0.4)), (15, pytest.approx(0.45))]
  _write(tmp_path, [_record(20, 2, 1.4), _record(20, 2, 1.5, kind="epoch")], resume_step=15)
  kinds = [(r["step"], r["kind"]) for r in map(json.loads, (tmp_path / "metrics.jsonl")
                                                .read_text().splitlines())]
  assert kinds == [(5, "window"), (10, "window"), (10, "epoch"), (15, "window"), (20, "window"),
                   (20, "epoch")]


def test_throughput_and_eta_leave_out_the_steps_that_compiled(tmp_path, capsys):
  """The first window's 3 steps: one compiled (not timed), two took 2 s: 2 x 4 images / 2 s."""
  writer = MetricsWriter(tmp_path)
  writer.start_progress(13, 0)
  meter = TrainMeter(writer, lambda step: 0.1, batch_size=4, end_step=13)
  meter.window([{"loss": 1.0, "accuracy": 0.5}] * 3, 3, 0, 2.0, compiled=1)
  meter.window([{"loss": 1.0, "accuracy": 0.5}] * 2, 5, 0, 4.0)
  writer.close()
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["images_per_sec"] for r in records] == [4.0, 2.0]
  assert meter.images_per_sec == pytest.approx(16 / 6.0) and meter.train_wall == 6.0
  out = capsys.readouterr().out.splitlines()
  assert out[0].endswith("4 img/s  ETA 10s")  # 10 steps of 4 images at the run's 8/2 img/s
  assert out[1].endswith("2 img/s  ETA 12s")  # 8 steps at 16/6 img/s