"""Step-level training logs on rank 0: ``steps.jsonl`` always, TensorBoard when ``train.tensorboard`` is on.

Both are cut back to the checkpoint's step on resume (TensorBoard's ``purge_step``), so a killed-and-resumed run
shows one clean curve instead of the lost steps twice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from facelab.utils.extras import require_tensorboard
from facelab.utils.io import atomic_open
from facelab.utils.plotting import plt, save_figure


class StepLog:
    def __init__(self, out: Path, every: int, tensorboard: bool, resume_step: int | None) -> None:
        self.every = every
        self.path = out / "steps.jsonl"
        self.writer = None
        if tensorboard:
            writer_cls = require_tensorboard()
            self.writer = writer_cls(str(out / "tensorboard"), purge_step=resume_step)
        if every <= 0:
            return
        kept = []
        if resume_step is not None and self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a kill
                    continue
                if rec.get("step", 0) <= resume_step:
                    kept.append(line)
        with atomic_open(self.path, "w") as fh:
            fh.writelines(line + "\n" for line in kept)

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def step(self, step: int, record: dict[str, Any]) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"step": step, **record}) + "\n")
        self._scalars("train", step, record)

    def epoch(self, step: int, record: dict[str, Any]) -> None:
        self._scalars("epoch", step, record)

    def _scalars(self, prefix: str, step: int, record: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in record.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and key not in ("epoch", "step"):
                self.writer.add_scalar(f"{prefix}/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def plot_training_curves(history: list[dict], path: str | Path) -> None:
    """Loss (and validation loss) per epoch on the left axis; training accuracy, validation accuracy and
    verification AUC on the right when present; the best validated epoch as a dashed line. PNG."""
    epochs = [h["epoch"] for h in history]
    fig, ax1 = plt.subplots(figsize=(6, 4))
    ax1.plot(epochs, [h["loss"] for h in history], color="tab:blue", label="train loss")
    if any(h.get("val_loss") is not None for h in history):
        ax1.plot(epochs, [h.get("val_loss") for h in history], color="tab:blue", linestyle=":", label="val loss")
    terms = sorted({k for h in history for k in h if k.startswith("loss.")})  # a joint loss's components
    for i, key in enumerate(terms):
        ax1.plot(epochs, [h.get(key) for h in history], color="tab:blue", linestyle="--", linewidth=1,
                 alpha=0.9 - 0.5 * i / max(len(terms), 1), label=f"{key[5:]} (unweighted)")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss", color="tab:blue")
    handles, labels = ax1.get_legend_handles_labels()
    right = [("train_acc", "train accuracy", "tab:orange", "-"), ("val_acc", "val accuracy", "tab:red", "-"),
             ("val_auc", "val AUC", "tab:green", "-")]
    shown = [r for r in right if any(h.get(r[0]) is not None for h in history)]
    if shown:
        ax2 = ax1.twinx()
        for key, label, colour, style in shown:
            ax2.plot(epochs, [h.get(key) for h in history], color=colour, linestyle=style, label=label)
        ax2.set_ylabel("accuracy / AUC")
        ax2.set_ylim(0, 1.01)
        more = ax2.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    best = [h["best_epoch"] for h in history if h.get("best_epoch")]
    if best:
        ax1.axvline(best[-1], color="grey", linestyle="--", linewidth=1)
        handles.append(ax1.lines[-1])
        labels.append(f"best epoch ({best[-1]})")
    if len(handles) > 1:
        ax1.legend(handles, labels, fontsize=8, loc="center right")
    ax1.set_title("training")
    ax1.grid(True, alpha=0.3)
    save_figure(fig, path)
