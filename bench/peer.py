"""The peer: the hand-written Keras recipe of "Deep Learning with Python" (ch. 5).

What a user writes instead of installing smallcnn, here with the same MobileNetV2
ImageNet weights at 224 px: ImageDataGenerator.flow_from_directory feeding
conv_base.predict for feature extraction, and the same generator with the book's
augmentation feeding model.fit for the frozen base, then fine-tuning.

    python bench/peer.py extract|frozen|finetune DATA --epochs N --out result.json
"""

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from tensorflow import keras  # noqa: E402
from tensorflow.keras.preprocessing.image import ImageDataGenerator  # noqa: E402

WEIGHTS = (Path(__file__).resolve().parents[1] / "smallcnn" / "model" / "weights"
           / "mobilenet_v2_1.0_224_imagenet_notop.weights.h5")
SIZE = (224, 224)
BATCH = 20
preprocess = keras.applications.mobilenet_v2.preprocess_input


def conv_base():
    base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(*SIZE, 3))
    base.load_weights(str(WEIGHTS))
    return base


def split_dirs(data):
    data = Path(data)
    val = data / "val" if (data / "val").is_dir() else data / "validation"
    test = data / "test" if (data / "test").is_dir() else None
    return data / "train", val, test


def count(folder):
    return sum(1 for p in Path(folder).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def extract_features(base, folder):
    """The book's loop: generator batches through conv_base.predict."""
    n = count(folder)
    features = np.zeros((n, 7, 7, 1280), dtype=np.float32)
    labels = np.zeros((n,), dtype=np.float32)
    generator = ImageDataGenerator(preprocessing_function=preprocess).flow_from_directory(
        folder, target_size=SIZE, batch_size=BATCH, class_mode="binary", shuffle=False)
    i = 0
    for inputs, targets in generator:
        batch = base.predict(inputs, verbose=0)
        features[i * BATCH:(i + 1) * BATCH] = batch
        labels[i * BATCH:(i + 1) * BATCH] = targets
        i += 1
        if i * BATCH >= n:
            break
    return features.reshape(n, -1), labels


def head():
    return [keras.layers.Flatten(), keras.layers.Dense(256, activation="relu"),
            keras.layers.Dropout(0.5), keras.layers.Dense(1, activation="sigmoid")]


def run_extract(data, epochs):
    train_dir, val_dir, test_dir = split_dirs(data)
    base = conv_base()
    started = time.time()
    train = extract_features(base, train_dir)
    val = extract_features(base, val_dir)
    test = extract_features(base, test_dir) if test_dir else None
    extracted = time.time()
    model = keras.Sequential([keras.Input((7 * 7 * 1280,)), *head()[1:]])
    model.compile(optimizer=keras.optimizers.RMSprop(learning_rate=2e-5),
                  loss="binary_crossentropy", metrics=["accuracy"])
    model.fit(*train, epochs=epochs, batch_size=BATCH, validation_data=val, verbose=0)
    result = {"seconds_extracting": extracted - started, "seconds_training": time.time() - extracted,
              "val_accuracy": float(model.evaluate(*val, verbose=0)[1]),
              "images_through_base": len(train[0]) + len(val[0]) + (len(test[0]) if test else 0)}
    if test:
        result["test_accuracy"] = float(model.evaluate(*test, verbose=0)[1])
    return result


def generators(data):
    train_dir, val_dir, _ = split_dirs(data)
    augmented = ImageDataGenerator(
        preprocessing_function=preprocess, rotation_range=40, width_shift_range=0.2,
        height_shift_range=0.2, shear_range=0.2, zoom_range=0.2, horizontal_flip=True,
        fill_mode="nearest")
    plain = ImageDataGenerator(preprocessing_function=preprocess)
    train = augmented.flow_from_directory(train_dir, target_size=SIZE, batch_size=BATCH,
                                          class_mode="binary")
    val = plain.flow_from_directory(val_dir, target_size=SIZE, batch_size=BATCH,
                                    class_mode="binary")
    return train, val


class EpochTimes(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.time()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.time() - self.started)


def run_frozen(data, epochs, finetune=False):
    train, val = generators(data)
    base = conv_base()
    base.trainable = False
    model = keras.Sequential([keras.Input((*SIZE, 3)), base, *head()])
    model.compile(optimizer=keras.optimizers.RMSprop(learning_rate=2e-5),
                  loss="binary_crossentropy", metrics=["accuracy"])
    timer = EpochTimes()
    started = time.time()
    model.fit(train, epochs=epochs, validation_data=val, callbacks=[timer], verbose=0)
    result = {"epoch_seconds": timer.times, "seconds": time.time() - started,
              "val_accuracy": float(model.evaluate(val, verbose=0)[1])}
    if finetune:  # the book's step: unfreeze the top of the base, recompile at 1e-5
        base.trainable = True
        top = [l for l in base.layers if l.weights and not isinstance(l, keras.layers.BatchNormalization)][-4:]
        for layer in base.layers:
            layer.trainable = layer in top
        model.compile(optimizer=keras.optimizers.RMSprop(learning_rate=1e-5),
                      loss="binary_crossentropy", metrics=["accuracy"])
        timer = EpochTimes()
        tuned = time.time()
        model.fit(train, epochs=epochs, validation_data=val, callbacks=[timer], verbose=0)
        result.update({"finetune_epoch_seconds": timer.times, "seconds": time.time() - started,
                       "finetune_seconds": time.time() - tuned,
                       "val_accuracy": float(model.evaluate(val, verbose=0)[1])})
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", choices=["extract", "frozen", "finetune"])
    parser.add_argument("data")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.phase == "extract":
        result = run_extract(args.data, args.epochs)
    else:
        result = run_frozen(args.data, args.epochs, finetune=args.phase == "finetune")
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
