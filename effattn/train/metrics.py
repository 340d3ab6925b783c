"""Tensorboard scalars (tensorboardX, no TensorFlow) and the console progress bar."""

from __future__ import annotations

import os

from tensorboardX import SummaryWriter
from tqdm.auto import tqdm


class MetricsWriter:
    """Writes scalars under workdir/tb; `tensorboard --logdir workdir/tb` shows them."""

    def __init__(self, workdir: str):
        self.logdir = os.path.join(os.path.abspath(workdir), 'tb')
        self.writer = SummaryWriter(self.logdir)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, float(value), step)
        self.writer.flush()

    def text(self, step: int, name: str, value: str) -> None:
        self.writer.add_text(name, value, step)

    def close(self) -> None:
        self.writer.close()


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
