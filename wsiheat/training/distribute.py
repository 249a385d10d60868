"""Distributed training: the ``tf.distribute`` strategy, ``TF_CONFIG``, and the multi-worker step loop.

:func:`select_strategy` chooses ``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` lists
several workers, ``MirroredStrategy`` with more than one local GPU, else the default
strategy. :class:`StepRunner` and :func:`train_steps` run the custom step loop of
multi-worker training; metrics are all-reduced from binned statistics.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from wsiheat.errors import WsiheatError

if TYPE_CHECKING:  # pragma: no cover
    from typing import Callable

    import keras
    import numpy as np
    import tensorflow as tf

# --- training strategies -----------------------------------------------------------------

def tf_config_workers(env: dict | None = None) -> int:
    """Number of workers (chief included) that ``TF_CONFIG`` describes; 0 without it."""
    env = os.environ if env is None else env
    raw = env.get("TF_CONFIG")
    if not raw:
        return 0
    try:
        cfg = json.loads(raw)
        cluster = cfg.get("cluster", {})
        return sum(len(cluster.get(k, [])) for k in ("chief", "worker"))
    except (json.JSONDecodeError, AttributeError, TypeError):
        raise WsiheatError(f"TF_CONFIG: not valid JSON with a 'cluster' entry: {raw[:80]!r}") from None


_MW_STRATEGY = None


def multiworker_strategy() -> tf.distribute.Strategy:
    """The process's ``MultiWorkerMirroredStrategy`` (from ``TF_CONFIG``), created once.

    TensorFlow configures the collectives when the strategy is created, which
    must happen before TensorFlow runs any operation; the CLI creates it right
    after importing TensorFlow and later calls get the same object.
    """
    global _MW_STRATEGY
    if _MW_STRATEGY is None:
        import tensorflow as tf

        try:
            _MW_STRATEGY = tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as e:
            if "startup" not in str(e):
                raise
            raise WsiheatError("TF_CONFIG: the multi-worker strategy must be created before "
                               "TensorFlow runs anything; train in a fresh process") from None
        except (ValueError, KeyError, tf.errors.OpError) as e:  # bad task index, busy port, ...
            msg = (str(getattr(e, "message", e)).strip().splitlines() or [type(e).__name__])[0]
            raise WsiheatError(f"TF_CONFIG: cannot start the multi-worker strategy: {msg} (this "
                               "task's host:port must be this machine and free)") from None
    return _MW_STRATEGY


def select_strategy() -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy for training on the resources at hand.

    * ``TF_CONFIG`` describing more than one worker: ``MultiWorkerMirroredStrategy``
      (synchronous data parallelism across machines; every machine runs the
      same command with its own ``TF_CONFIG`` task index);
    * more than one local GPU: ``MirroredStrategy``;
    * otherwise the default strategy (one device).
    """
    import tensorflow as tf

    if tf_config_workers() > 1:
        return multiworker_strategy()
    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def tf_config_task(env: dict | None = None) -> tuple[str | None, int]:
    """``(task type, task index)`` from ``TF_CONFIG``; ``(None, 0)`` without it."""
    env = os.environ if env is None else env
    raw = env.get("TF_CONFIG")
    if not raw:
        return None, 0
    tf_config_workers(env)  # validates the JSON
    task = json.loads(raw).get("task") or {}
    if not isinstance(task, dict):
        raise WsiheatError(f"TF_CONFIG: 'task' must be an object like {{\"type\": \"worker\", "
                           f"\"index\": 0}}, not {task!r}")
    try:
        return task.get("type"), int(task.get("index", 0))
    except (TypeError, ValueError):
        raise WsiheatError(f"TF_CONFIG: task index {task.get('index')!r} is not an integer") from None


def tf_config_is_chief(env: dict | None = None) -> bool:
    """Whether this process is the chief of a ``TF_CONFIG`` cluster (TensorFlow's rule).

    The chief is the task of type ``chief``, or worker 0 when the cluster has
    no ``chief`` entry; without ``TF_CONFIG`` the single process is the chief.
    """
    env = os.environ if env is None else env
    kind, index = tf_config_task(env)
    if kind is None or kind == "chief":
        return True
    cluster = json.loads(env["TF_CONFIG"]).get("cluster", {})
    return kind == "worker" and index == 0 and not cluster.get("chief")


#: Number of histogram bins of the training-metric statistics (the AUC resolution).
STAT_BINS = 200


def binned_stats(y_true: tf.Tensor, y_pred: tf.Tensor, sample_weight: tf.Tensor | None = None,
                 bins: int = STAT_BINS) -> tf.Tensor:
    """Additive statistics of a batch: ``[tp, fp, tn, fn, hist_pos(bins), hist_neg(bins)]``.

    Summed over replicas and steps they give accuracy, sensitivity,
    specificity (threshold 0.5) and the AUC of the binned scores
    (:func:`metrics_from_stats`). A TensorFlow function (runs inside
    ``strategy.run``).
    """
    import tensorflow as tf

    y = tf.reshape(tf.cast(y_true, tf.float32), (-1,)) >= 0.5
    p = tf.reshape(tf.cast(y_pred, tf.float32), (-1,))
    hi = p > 0.5  # keras BinaryAccuracy / Recall: strictly above the threshold
    yf, nf = tf.cast(y, tf.float32), tf.cast(tf.logical_not(y), tf.float32)
    tp = tf.reduce_sum(yf * tf.cast(hi, tf.float32))
    fn = tf.reduce_sum(yf) - tp
    fp_spec = tf.reduce_sum(nf * tf.cast(p >= 0.5, tf.float32))  # wsiheat Specificity: >= 0.5
    tn = tf.reduce_sum(nf) - fp_spec
    fp = tf.reduce_sum(nf * tf.cast(hi, tf.float32))
    hpos = tf.cast(tf.histogram_fixed_width(tf.boolean_mask(p, y), [0.0, 1.0], nbins=bins), tf.float32)
    hneg = tf.cast(tf.histogram_fixed_width(tf.boolean_mask(p, tf.logical_not(y)), [0.0, 1.0],
                                            nbins=bins), tf.float32)
    return tf.concat([tf.stack([tp, fp, tn, fn, fp_spec]), hpos, hneg], axis=0)


def metrics_from_stats(stats: np.ndarray | tf.Tensor) -> dict:
    """AUC, accuracy, sensitivity, specificity from summed :func:`binned_stats`.

    The AUC is the Mann-Whitney AUC of the binned scores (ties within a bin
    count 1/2); NaN when a class is missing.
    """
    import numpy as np

    s = np.asarray(stats, np.float64)
    tp, fp, tn, fn, fp_spec = s[:5]
    bins = (len(s) - 5) // 2
    hpos, hneg = s[5:5 + bins], s[5 + bins:]
    npos, nneg = hpos.sum(), hneg.sum()
    out = {}
    if npos > 0 and nneg > 0:
        tpr = np.concatenate([[0.0], np.cumsum(hpos[::-1]) / npos])
        fpr = np.concatenate([[0.0], np.cumsum(hneg[::-1]) / nneg])
        out["auc"] = float(np.sum((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1]) / 2.0))
    else:
        out["auc"] = float("nan")
    n = npos + nneg
    out["accuracy"] = float((tp + (nneg - fp)) / n) if n else float("nan")
    out["sensitivity"] = float(tp / (tp + fn)) if tp + fn else 0.0
    out["specificity"] = float(tn / (tn + fp_spec)) if tn + fp_spec else 0.0
    return out


class StepRunner:
    """Synchronous data-parallel training steps with ``strategy.run`` (a custom loop).

    Keras 3.15's ``Model.fit`` fails under ``MultiWorkerMirroredStrategy``
    (keras-team/keras#20585: it all-reduces the first data batch and the
    scalar logs with ``axis=0``); this loop uses only public
    ``tf.distribute`` API and works with every strategy. The distributed
    iterator and the compiled step persist across :meth:`run` calls (epochs
    continue the data stream).

    Parameters
    ----------
    model : keras.Model
        Created inside ``strategy.scope()``.
    dataset : tf.data.Dataset or callable
        A dataset of ``(x, y)`` global batches of ``global_batch_size``
        (repeat it; distributed and auto-sharded across workers here), or a
        function ``fn(tf.distribute.InputContext) -> dataset`` of per-replica
        batches (``strategy.distribute_datasets_from_function``; no auto-sharding).
    strategy : tf.distribute.Strategy
    optimizer : keras.optimizers.Optimizer
        Created inside ``strategy.scope()``; a ``LossScaleOptimizer`` scales the loss.
    loss_fn : callable
        ``loss_fn(y_true, y_pred) -> per-example losses`` (no reduction).
    global_batch_size : int
    class_weight : dict, optional
        ``{class: weight}``: per-example loss weights by label (as ``fit``'s ``class_weight``).
    stats : bool
        Also sum :func:`binned_stats` of the training predictions.
    """

    def __init__(self, model, dataset, strategy, *, optimizer, loss_fn, global_batch_size: int,
                 class_weight: dict | None = None, stats: bool = False):
        import tensorflow as tf

        self.strategy = strategy
        if callable(dataset) and not isinstance(dataset, tf.data.Dataset):
            dist = strategy.distribute_datasets_from_function(dataset)
        else:
            dist = strategy.experimental_distribute_dataset(dataset)
        self._iter = iter(dist)
        scale = getattr(optimizer, "scale_loss", None)
        cw = None if class_weight is None else (float(class_weight.get(0, 1.0)),
                                                float(class_weight.get(1, 1.0)))
        with strategy.scope():
            optimizer.build(model.trainable_variables)

        def step(x, y):
            with tf.GradientTape() as tape:
                pred = model(x, training=True)
                per = tf.cast(tf.reshape(loss_fn(y, pred), (-1,)), tf.float32)
                if cw is not None:
                    lab = tf.reshape(tf.cast(y, tf.float32), (-1,))
                    per = per * (cw[0] + (cw[1] - cw[0]) * lab)
                loss = tf.nn.compute_average_loss(per, global_batch_size=global_batch_size)
                scaled = scale(loss) if scale is not None else loss
            grads = tape.gradient(scaled, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            if stats:
                return loss, binned_stats(y, pred)
            return loss, tf.zeros((0,), tf.float32)

        @tf.function
        def dstep(batch):
            loss, st = strategy.run(step, args=batch)
            red = tf.distribute.ReduceOp.SUM
            return strategy.reduce(red, loss, axis=None), strategy.reduce(red, st, axis=None)

        self._step = dstep

    def run(self, steps: int):
        """Run ``steps`` steps; returns (global mean loss per step, summed stats or None)."""
        import numpy as np

        losses, total = [], None
        for _ in range(int(steps)):
            loss, st = self._step(next(self._iter))
            losses.append(float(loss))
            st = np.asarray(st, np.float64)
            total = st if total is None else total + st
        return losses, (total if total is not None and total.size else None)


def all_reduce_mean(strategy, value: float) -> float:
    """The mean of ``value`` over all replicas of ``strategy`` (a collective: call on every worker)."""
    import tensorflow as tf

    v = tf.constant(float(value), tf.float32)

    @tf.function
    def f():
        per = strategy.run(lambda: tf.identity(v))
        return strategy.reduce(tf.distribute.ReduceOp.MEAN, per, axis=None)

    return float(f())


def train_steps(model: keras.Model, dataset: tf.data.Dataset, strategy: tf.distribute.Strategy, steps: int, *,
                optimizer: keras.optimizers.Optimizer, loss_fn: Callable, global_batch_size: int,
                class_weight: dict | None = None) -> list[float]:
    """``steps`` synchronous data-parallel steps (:class:`StepRunner`); the global mean loss per step."""
    runner = StepRunner(model, dataset, strategy, optimizer=optimizer, loss_fn=loss_fn,
                        global_batch_size=global_batch_size, class_weight=class_weight)
    return runner.run(steps)[0]
