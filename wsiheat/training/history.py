"""The records of a training run: the history CSV and plot, the checkpoint and its resume state, early stopping.

``OUTPUT.history.csv`` / ``.png`` beside the model; ``OUTPUT.ckpt/`` (``last.keras``, ``state.json``)
while training runs, so that ``resume`` continues where a run stopped.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from wsiheat.fileio import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    import keras

log = logging.getLogger(__name__)

#: validation figures that can pick the best epoch: name -> +1 (higher is better) or -1
MONITORS = {"val_loss": -1, "val_auc": +1}


def monitored(monitor: str, logs: dict) -> float:
    """The monitored figure of an epoch as a value to minimise (inf when missing or not finite)."""
    v = logs.get(monitor)
    if v is None and monitor == "val_loss":
        v = logs.get("loss")  # no validation data: training loss
    v = math.inf if v is None else -MONITORS[monitor] * float(v)
    return v if math.isfinite(v) else math.inf


def best_so_far(state: dict) -> float:
    """The best monitored value (minimised) in a training state, older states included."""
    return float(state.get("best", state.get("best_val_loss", math.inf)))


def write_history(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    keys = list(rows[0].keys())
    for r in rows[1:]:
        keys += [k for k in r if k not in keys]
    with atomic_path(path, suffix=".csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)


def read_history(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def plot_history(rows: list[dict], path: Path) -> None:
    """Training curves (loss and AUC, train vs validation) as a PNG, atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return
    ep = [int(float(r["epoch"])) + 1 for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("loss", "auc")):
        for prefix, style in (("", "-o"), ("val_", "-s")):
            vals = [float(r.get(prefix + key, "nan") or "nan") for r in rows]
            ax.plot(ep, vals, style, label=f"{'validation' if prefix else 'train'} {key}")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _keras_callback_base():
    import keras

    return keras.callbacks.Callback


def make_checkpointer(ckpt: Path, history_path: Path, state: dict, history: list,
                       stage: int, stage_start: int, stage_end: int, lr: float, decay: float,
                       patience: int, monitor: str = "val_loss") -> keras.callbacks.Callback:
    Base = _keras_callback_base()

    class Checkpointer(Base):
        """Per epoch: lr decay, best weights, last model, state, history, early stopping."""

        def on_epoch_begin(self, epoch, logs=None):
            new_lr = lr * decay ** (epoch - stage_start)
            opt = self.model.optimizer
            inner = getattr(opt, "inner_optimizer", opt)
            inner.learning_rate.assign(new_lr)
            self._t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = dict(logs or {})
            row = {"epoch": epoch, "stage": stage,
                   "lr": float(lr * decay ** (epoch - stage_start)),
                   "seconds": round(time.perf_counter() - self._t0, 2)}
            row.update({k: float(v) for k, v in logs.items() if k != "learning_rate"})
            history.append(row)
            write_history(history_path, history)
            value = monitored(monitor, logs)
            if value < best_so_far(state):
                state.update(best=value, best_epoch=epoch, wait=0)
                with atomic_path(ckpt / "best.weights.h5", suffix=".weights.h5") as tmp:
                    self.model.save_weights(tmp)
            else:
                state["wait"] = state.get("wait", 0) + 1
            with atomic_path(ckpt / "last.keras", suffix=".keras") as tmp:
                self.model.save(tmp)
            state.update(epoch=epoch + 1, stage=stage)
            if state["wait"] >= patience:
                self.model.stop_training = True
                state["epoch"] = stage_end  # go on with the next stage after a resume
                state["wait"] = 0
                log.info("early stopping: %s did not improve for %d epoch(s)", monitor, patience)
            write_state(ckpt, state)

    return Checkpointer()


def write_state(ckpt: Path, state: dict) -> None:
    with atomic_path(ckpt / "state.json", suffix=".json") as tmp:
        tmp.write_text(json.dumps(state, indent=2))


def drop_empty_checkpoint(ckpt: Path, state: dict, resume: bool) -> None:
    """Remove the checkpoint folder of a fresh run that failed before finishing an epoch (nothing to resume)."""
    if not resume and not state.get("epoch"):
        shutil.rmtree(ckpt, ignore_errors=True)
