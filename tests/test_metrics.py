"""Result files, TensorBoard events, progress output and classification metrics."""

import io
import json
import math
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from jaxcnn import metrics, rundir
from jaxcnn.errors import DataError


def _record(epoch, steps_per_epoch=10, **extra):
    return {
        "epoch": epoch,
        "step": epoch * steps_per_epoch,
        "train_loss": 1.0 / epoch,
        "train_accuracy": 0.5 + epoch / 100,
        "val_loss": 1.2 / epoch,
        "val_accuracy": np.float32(0.4 + epoch / 100),  # numpy scalars are accepted
        "lr": 1e-3,
        "epoch_seconds": 2.0,
        "images_per_second": 1234.5,
        **extra,
    }


def test_atomic_writes_replace_whole_files_and_leave_no_temp_files(tmp_path):
    path = tmp_path / "out" / "summary.json"
    rundir.write_json_atomic(
        path, {"test_accuracy": np.float64(0.9), "shape": np.array([2, 3])}
    )
    rundir.write_json_atomic(path, {"test_accuracy": 0.95, "nan": float("nan")})
    assert json.loads(path.read_text()) == {"test_accuracy": 0.95, "nan": None}
    rundir.write_text_atomic(tmp_path / "out" / "note.txt", "hello\n")
    assert (tmp_path / "out" / "note.txt").read_text() == "hello\n"
    assert sorted(os.listdir(tmp_path / "out")) == ["note.txt", "summary.json"]


def test_failed_atomic_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "summary.json"
    rundir.write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        rundir.write_json_atomic(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["summary.json"]


def test_metrics_log_writes_lines_and_tensorboard_events(tmp_path):
    with rundir.MetricsLog(tmp_path) as log:
        for epoch in (1, 2):
            log.log_epoch(_record(epoch))
        assert [r["epoch"] for r in log.read()] == [1, 2]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert set(first) == {
        "epoch",
        "step",
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "lr",
        "epoch_seconds",
        "images_per_second",
    }
    assert first["val_accuracy"] == pytest.approx(0.41)
    events = os.listdir(tmp_path / "tensorboard")
    assert len(events) == 1 and events[0].startswith("events.out.tfevents")
    scalars = _scalars(tmp_path / "tensorboard" / events[0])
    assert ("train/loss", 10, 1.0) in scalars and ("train/loss", 20, 0.5) in scalars
    assert {tag for tag, _, _ in scalars} == {
        "train/loss",
        "train/accuracy",
        "val/loss",
        "val/accuracy",
        "lr",
        "epoch_seconds",
        "images_per_second",
    }
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    with pytest.raises(ValueError, match="needs \\['step'\\]"):
        rundir.MetricsLog(tmp_path, resume_epoch=2).log_epoch({"epoch": 3})


def test_resume_truncates_to_the_restored_epoch(tmp_path):
    with rundir.MetricsLog(tmp_path) as log:
        for epoch in (1, 2, 3, 4):
            log.log_epoch(_record(epoch))
    # a kill while appending leaves half a line behind
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 5, "st')
    assert [r["epoch"] for r in rundir.read_metrics(tmp_path)] == [1, 2, 3, 4]

    with rundir.MetricsLog(tmp_path, resume_epoch=2) as log:
        assert [r["epoch"] for r in log.read()] == [1, 2]
        assert [r["epoch"] for r in rundir.read_metrics(tmp_path)] == [1, 2]
        for epoch in (3, 4, 5):
            log.log_epoch(_record(epoch))
    epochs = [r["epoch"] for r in rundir.read_metrics(tmp_path)]
    assert epochs == [1, 2, 3, 4, 5]
    # a fresh run in the same directory starts a new file
    rundir.MetricsLog(tmp_path).close()
    assert rundir.read_metrics(tmp_path) == []


def test_corrupt_line_in_the_middle_is_an_error(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        '{"epoch": 1, "step": 5}\nnot json\n{"epoch": 2, "step": 10}\n'
    )
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        rundir.read_metrics(tmp_path)


@pytest.mark.parametrize(
    "line, problem",
    [
        ("42", "a JSON int, not an object"),
        (
            '{"epoch": "two", "step": 10}',
            "'epoch' must be an integer >= 1, got \"two\"",
        ),
        ('{"epoch": 2, "step": -1}', "'step' must be an integer >= 0, got -1"),
        ('{"epoch": 2, "step": 10, "val_accuracy": [1]}', "'val_accuracy' must be a"),
    ],
)
@pytest.mark.parametrize("where", ["middle", "last"])
def test_valid_json_that_is_not_an_epoch_record_is_a_clear_error(
    tmp_path, line, problem, where
):
    good = ['{"epoch": 1, "step": 5}', '{"epoch": 3, "step": 15}']
    lines = [good[0], line, good[1]] if where == "middle" else [*good, line]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    number = 2 if where == "middle" else 3
    with pytest.raises(DataError) as info:
        rundir.read_metrics(tmp_path)
    message = str(info.value)
    assert f"metrics.jsonl line {number} is not an epoch record (" in message
    assert problem in message and "--restart" in message


def test_a_lost_last_record_is_rebuilt_from_the_checkpoint_or_refused(tmp_path):
    saved = json.loads(rundir.dumps(_record(2)))  # the copy in the checkpoint's meta
    with rundir.MetricsLog(tmp_path) as log:
        for epoch in (1, 2):
            log.log_epoch(_record(epoch))
    path = tmp_path / "metrics.jsonl"
    first, second = path.read_text().splitlines()
    path.write_text(first + "\n" + second[: len(second) // 2])  # a cut last line
    with rundir.MetricsLog(tmp_path, resume_epoch=2, resume_record=saved) as log:
        assert [r["epoch"] for r in log.read()] == [1, 2]
    assert rundir.read_metrics(tmp_path) == [json.loads(first), saved]

    path.write_text(first + "\n" + second[: len(second) // 2])
    with pytest.raises(DataError) as info:
        rundir.MetricsLog(tmp_path, resume_epoch=2)  # a checkpoint without the copy
    assert "lacks the records of epoch(s) 2, which the checkpoint" in str(info.value)
    path.write_text(second + "\n")  # epoch 1 gone: not rebuilt from epoch 2's copy
    with pytest.raises(DataError, match=r"epoch\(s\) 1, which"):
        rundir.MetricsLog(tmp_path, resume_epoch=2, resume_record=saved)


def test_metrics_module_does_not_import_tensorflow(tmp_path):
    code = (
        "import sys; from jaxcnn import rundir; "
        f"log = rundir.MetricsLog({str(tmp_path)!r}); "
        "log.log_epoch({'epoch': 1, 'step': 5, 'train_loss': 0.5}); log.close(); "
        "print('tensorflow' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


def _scalars(event_file):
    """(tag, step, value) of every scalar in a TFRecord event file, read without TensorFlow."""
    from tensorboardX.proto import event_pb2

    data, found, offset = open(event_file, "rb").read(), [], 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset : offset + 8])
        event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
        offset += 12 + length + 4
        for value in event.summary.value:
            found.append((value.tag, event.step, value.simple_value))
    return found


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_on_a_terminal_redraws_one_line():
    stream = _Terminal()
    progress = metrics.Progress(4, epoch=2, epochs=5, stream=stream, min_interval=0.0)
    progress.update(1, loss=0.5, accuracy=0.25, images_per_second=1500.0)
    progress.update(4, loss=0.25, accuracy=0.75, images_per_second=2000.0)
    progress.close("epoch 2/5 done")
    text = stream.getvalue()
    frames = text.split("\r")[1:]
    assert len(frames) == 3
    assert frames[0].startswith(
        "epoch 2/5 [#####---------------] 1/4 loss 0.5000 acc 0.2500"
    )
    assert "1,500 img/s ETA " in frames[0]
    assert frames[1].startswith(
        "epoch 2/5 [####################] 4/4 loss 0.2500 acc 0.7500"
    )
    assert frames[1].endswith("ETA 0:00")
    assert frames[2].startswith("epoch 2/5 done ") and frames[2].endswith("\n")
    assert text.count("\n") == 1


def test_progress_throttles_redraws_but_always_draws_the_last_step():
    stream = _Terminal()
    progress = metrics.Progress(
        100, epoch=1, epochs=1, stream=stream, min_interval=3600
    )
    for step in range(1, 101):
        progress.update(step, loss=1.0, accuracy=0.5, images_per_second=10.0)
    assert stream.getvalue().count("\r") == 2  # step 1 and step 100


def test_progress_without_a_terminal_writes_one_plain_line_per_epoch():
    stream = io.StringIO()
    for epoch in (1, 2):
        progress = metrics.Progress(3, epoch=epoch, epochs=2, stream=stream)
        for step in (1, 2, 3):
            progress.update(step, loss=0.1, accuracy=0.9, images_per_second=100.0)
        progress.close(metrics.format_epoch(_record(epoch), epochs=2))
    lines = stream.getvalue().split("\n")
    assert "\r" not in stream.getvalue()
    assert lines[-1] == "" and len(lines) == 3
    assert lines[0] == (
        "epoch 1/2  train loss 1.0000 acc 0.5100  val loss 1.2000 acc 0.4100  lr 0.001  "
        "2.0 s  1,234 img/s"
    )


def test_quiet_progress_prints_nothing():
    stream = _Terminal()
    progress = metrics.Progress(3, epoch=1, epochs=1, stream=stream, quiet=True)
    progress.update(3, loss=0.1, accuracy=0.9, images_per_second=100.0)
    progress.close("done")
    assert stream.getvalue() == ""


def test_confusion_matrix_and_per_class_accuracy_hand_case():
    labels = np.array([0, 0, 1, 1, 1, 2])
    predictions = np.array([0, 1, 1, 1, 0, 1])
    confusion = metrics.confusion_matrix(labels, predictions, num_classes=4)
    expected = np.array([[1, 1, 0, 0], [1, 2, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(confusion, expected)
    assert confusion.dtype == np.int64
    accuracy = metrics.per_class_accuracy(confusion)
    np.testing.assert_allclose(accuracy[:3], [0.5, 2 / 3, 0.0])
    assert math.isnan(accuracy[3])  # no examples of class 3
    with pytest.raises(
        DataError, match="labels range from 0 to 2, outside the 2 classes"
    ):
        metrics.confusion_matrix(labels, predictions, num_classes=2)
    with pytest.raises(DataError, match="6 labels but 5 predictions"):
        metrics.confusion_matrix(labels, predictions[:5], num_classes=4)


def test_mean_confidence_interval():
    mean, std, half = metrics.mean_confidence_interval([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0)
    assert std == pytest.approx(1.0)
    assert half == pytest.approx(4.302652729911275 / math.sqrt(3))  # t(0.975, df=2)
    mean, std, half = metrics.mean_confidence_interval([0.9])
    assert mean == 0.9 and math.isnan(std) and math.isnan(half)
    with pytest.raises(ValueError, match="at least one value"):
        metrics.mean_confidence_interval([])


def test_atomic_files_get_the_umask_mode_not_0600(tmp_path):
    code = (
        "import os, sys; os.umask(0o022); from jaxcnn import rundir; "
        "rundir.write_json_atomic(sys.argv[1], {'a': 1})"
    )
    target = tmp_path / "summary.json"
    subprocess.run([sys.executable, "-c", code, str(target)], check=True)
    assert target.stat().st_mode & 0o777 == 0o644
