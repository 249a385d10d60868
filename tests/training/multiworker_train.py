"""One worker of the multi-worker training test (run as a script with TF_CONFIG set).

Usage: python tests/training/multiworker_train.py OUT_DIR
Trains a tiny Keras model a few steps under wsiheat.training.distribute.select_strategy()
(MultiWorkerMirroredStrategy from TF_CONFIG), writes OUT_DIR/worker_<index>.json with
the strategy name, replica count and final weights checksum; the chief (index 0)
saves OUT_DIR/model.keras.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def main(out_dir: str) -> None:
    import keras
    import tensorflow as tf

    from wsiheat.training.distribute import select_strategy, train_steps

    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    strategy = select_strategy()
    rng = np.random.default_rng(0)  # same data on every worker; each sees its shard
    x = rng.normal(size=(256, 8)).astype("float32")
    y = (x[:, :1] + x[:, 1:2] > 0).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32).repeat()
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, activation="relu"),
                                  keras.layers.Dense(1, activation="sigmoid")])
        optimizer = keras.optimizers.SGD(0.1)
    bce = keras.losses.BinaryCrossentropy(reduction=None)
    losses = train_steps(model, ds, strategy, 8, optimizer=optimizer, loss_fn=bce, global_batch_size=32)
    weights = [w.numpy() if hasattr(w, "numpy") else np.asarray(w) for w in model.weights]
    if index == 0:
        model.save(os.path.join(out_dir, "model.keras"))
    with open(os.path.join(out_dir, f"worker_{index}.json"), "w") as f:
        json.dump({"strategy": type(strategy).__name__, "replicas": strategy.num_replicas_in_sync,
                   "loss": losses,
                   "weights_sum": float(sum(np.sum(w, dtype=np.float64) for w in weights))}, f)


if __name__ == "__main__":
    main(sys.argv[1])
