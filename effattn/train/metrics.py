"""Tensorboard scalars and text (tensorboard's own event writer, no TensorFlow) and the console progress bar."""

from __future__ import annotations

import os
import time

from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from tensorboard.plugins.text import metadata as text_metadata
from tensorboard.summary.writer.event_file_writer import EventFileWriter
from tqdm.auto import tqdm


class MetricsWriter:
    """Writes scalars under workdir/tb; `tensorboard --logdir workdir/tb` shows them.

    Summaries are written as tensorboard's own protos through its EventFileWriter: tensorboard's summary
    helpers need TensorFlow, and tensorboardX imports torch whenever it is installed (~0.9 s per run)."""

    def __init__(self, workdir: str):
        self.logdir = os.path.join(os.path.abspath(workdir), 'tb')
        self.events = EventFileWriter(self.logdir)

    def _add(self, step: int, value: summary_pb2.Summary.Value) -> None:
        summary = summary_pb2.Summary(value=[value])
        self.events.add_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self._add(step, summary_pb2.Summary.Value(tag=name, simple_value=float(value)))
        self.events.flush()

    def text(self, step: int, name: str, value: str) -> None:
        """A markdown string for tensorboard's text tab (a scalar string tensor tagged for the text plugin)."""
        tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[value.encode()],
                                        tensor_shape=tensor_shape_pb2.TensorShapeProto())
        metadata = text_metadata.create_summary_metadata(display_name=name, description='')
        self._add(step, summary_pb2.Summary.Value(tag=name, tensor=tensor, metadata=metadata))
        self.events.flush()

    def close(self) -> None:
        self.events.close()


class ProgressBar:
    """tqdm bar over train steps, showing loss, accuracy and tokens/s."""

    def __init__(self, total: int, initial: int):
        self.bar = tqdm(
            total=total,
            initial=initial,
            desc='train',
            unit='step',
            dynamic_ncols=True,
            mininterval=0.5,
        )

    def update(self, steps: int, **postfix) -> None:
        self.bar.update(steps)
        if postfix:
            self.bar.set_postfix(
                {k: (f'{v:.4g}' if isinstance(v, float) else v) for k, v in postfix.items()},
                refresh=False,
            )

    def write(self, line: str) -> None:
        self.bar.write(line)

    def close(self) -> None:
        self.bar.close()
