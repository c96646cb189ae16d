"""Which unlabelled images are worth labelling next: rankings of a pool by the base's
features (and a model's probabilities, where one exists), in NumPy and scikit-learn's
k-means, with no TensorFlow, so that the labelling page can rank a pool of a few
thousand images after each retrain in well under a second.

- `margin`: the images whose two most probable classes are closest (uncertainty).
- `typical`: coverage for the cold start, as TypiClust does it (Hacohen, Dekel and
  Weinshall, 2022): k-means of the pool and the labelled images into |labelled| + n
  clusters; of each cluster that holds no labelled image, largest first, the most
  typical image (highest inverse mean distance to its nearest neighbours in it).
- `mix`: typical while labels are few (under `MIX_TYPICAL_PER_CLASS` per class, or no
  model yet), margin after.
- `random`: the baseline.
- `auto`: the default, `mix` (`AUTO`), the best that bench/label_less.py measured
  (docs/benchmarks.md; EfficientNet-B0 features, extract's head, 5 seeds): on
  food101-10 it reaches random choice's test accuracy at 100 labels (63.4%) with 60
  of them, and at 20 labels beats it by 14.6 points (49.5% against 34.9%); on
  cats-dogs-small, where random's 20 labels already reach 96.9%, it gains 0.3 points
  at 20 labels and 0.4 at 100.

Every strategy keeps a batch diverse: a candidate whose cosine similarity to an image
already chosen is above `DUPLICATE_COSINE` is passed over.
"""

import warnings

import numpy as np

from smallcnn.errors import UsageError

STRATEGIES = ("auto", "margin", "typical", "mix", "random")
AUTO = "mix"  # what "auto" runs (see above)
N = 50  # images suggested at a time (suggest --n)
# Of L2-normalised pooled features: above this, two images are near-duplicates (crops,
# re-encodings of one photo) and only the first of them is suggested. EfficientNet-B0's,
# of cats-dogs-small's train images: 99% are at most 0.81 from their nearest other
# image; its duplicate pair is at 0.994.
DUPLICATE_COSINE = 0.95
TYPICAL_NEIGHBOURS = 20  # the neighbours whose mean distance measures typicality
# mix: typical below this many labels per class, margin from it. bench/label_less.py:
# from 5 on, food101-10 at 100 labels lost 2.8 points to typical; from 20, cats-dogs-small
# was behind random at 100 labels.
MIX_TYPICAL_PER_CLASS = 10
KMEANS_ITERATIONS = 50  # a cap on k-means' rounds (scikit-learn's is 300): time bounded
# k-means runs on the features' first principal components: on cats-dogs-small's 2,200
# rows of 1,280 into 400 clusters, 0.7 s after PCA to 64, 6.7 s on the features (one thread).
KMEANS_DIMENSIONS = 64


def normalised(features):
    """Rows scaled to unit length (float32): cosine similarity is then a dot product."""
    x = np.asarray(features, np.float32)
    if x.ndim != 2:
        raise UsageError(f"Features must be a 2-D array (images x features). Received: "
                         f"shape={x.shape}")
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def margins(probabilities):
    """Top-1 minus top-2 probability of each row (0: a tie, 1: certain)."""
    p = np.asarray(probabilities, np.float32)
    if p.shape[1] < 2:
        return np.ones(len(p), np.float32)
    top = np.partition(p, -2, axis=1)
    return top[:, -1] - top[:, -2]


def chosen_strategy(strategy, labelled_count, probabilities):
    """The strategy `rank` runs for `strategy`: auto's and mix's rule resolved."""
    if strategy not in STRATEGIES:
        raise UsageError(f"Unknown strategy {strategy!r}. Choose one of: "
                         f"{', '.join(STRATEGIES)}.")
    if strategy == "auto":
        strategy = AUTO
    if strategy == "mix":
        few = probabilities is None or \
            labelled_count < MIX_TYPICAL_PER_CLASS * np.shape(probabilities)[1]
        strategy = "typical" if few else "margin"
    if strategy == "margin" and probabilities is None:
        raise UsageError("The margin strategy needs a model's probabilities: give --model "
                         "RUN, or use --strategy typical (no model needed).")
    return strategy


def rank(pool_features, strategy="auto", n=N, labelled_features=None, probabilities=None,
         seed=0):
    """The pool images most worth labelling, best first.

    Args:
        pool_features: (pool, features) array of the unlabelled images.
        strategy: one of `STRATEGIES`.
        n: at most this many indices are returned.
        labelled_features: (labelled, features) array of the images already labelled, or
            None (a cold start).
        probabilities: (pool, classes) array of a model's probabilities, or None (no
            model yet).
        seed: seeds k-means and random choice.

    Returns:
        A list of indices into the pool, at most `n`, no two near-duplicates.
    """
    pool = normalised(pool_features)
    if not len(pool):
        raise UsageError("The pool holds no image to rank; give a folder or a list of "
                         "unlabelled images.")
    if n < 1:
        raise UsageError(f"n must be at least 1. Received: {n}")
    labelled = np.zeros((0, pool.shape[1]), np.float32)
    if labelled_features is not None and len(labelled_features):
        labelled = normalised(labelled_features)
    if probabilities is not None and len(probabilities) != len(pool):
        raise UsageError(f"probabilities has {len(probabilities)} rows for a pool of "
                         f"{len(pool)} images; give one row per pool image.")
    strategy = chosen_strategy(strategy, len(labelled), probabilities)
    if strategy == "margin":
        order = np.argsort(margins(probabilities), kind="stable")
    elif strategy == "random":
        order = np.random.default_rng(seed).permutation(len(pool))
    else:
        order = typical_order(pool, labelled, n, seed)
    return diverse(pool, order, n)


def diverse(pool, order, n, threshold=DUPLICATE_COSINE):
    """The first `n` of `order` (indices into the normalised `pool`), passing over each
    candidate whose cosine to one already taken is above `threshold`."""
    taken = []
    for index in order:
        if len(taken) == n:
            break
        if taken and float((pool[taken] @ pool[index]).max()) > threshold:
            continue
        taken.append(int(index))
    return taken


def typical_order(pool, labelled, n, seed=0):
    """TypiClust's order: the most typical image of each cluster without a labelled image,
    largest cluster first; then the rest of the pool by typicality (for `diverse` to take
    from where duplicates were passed over)."""
    from threadpoolctl import threadpool_limits

    features = np.concatenate([pool, labelled])
    # The matrices are small: one BLAS thread runs them as fast, where several on a busy
    # 2-core machine ran PCA 15 to 50 times slower (0.11 s against 1.6 to 6.6 s, here).
    with threadpool_limits(1):
        assignment = _clusters(features, min(len(labelled) + n, len(features)), seed)
        typicality = _typicality(features, assignment)[: len(pool)]
    covered = set(assignment[len(pool):].tolist())
    sizes = np.bincount(assignment)
    firsts = []
    for cluster in np.argsort(-sizes, kind="stable"):
        members = np.flatnonzero(assignment[: len(pool)] == cluster)
        if cluster in covered or not len(members):
            continue
        firsts.append(int(members[np.argmax(typicality[members])]))
    first = set(firsts)
    rest = [int(i) for i in np.argsort(-typicality, kind="stable") if int(i) not in first]
    return firsts + rest


def _clusters(features, clusters, seed):
    """The k-means cluster of each row, on the rows' first principal components."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.exceptions import ConvergenceWarning

    reduced = features
    if min(features.shape) > KMEANS_DIMENSIONS:
        reduced = PCA(KMEANS_DIMENSIONS, svd_solver="randomized",
                      random_state=seed).fit_transform(features)
    with warnings.catch_warnings():  # copies of an image leave clusters empty: harmless
        warnings.simplefilter("ignore", ConvergenceWarning)
        return KMeans(clusters, n_init=1, max_iter=KMEANS_ITERATIONS,
                      random_state=seed).fit_predict(reduced)


def _typicality(features, assignment):
    """Each row's inverse mean cosine distance to its nearest neighbours in its cluster
    (TypiClust's measure, `TYPICAL_NEIGHBOURS` of them at most)."""
    typicality = np.zeros(len(features), np.float32)
    for cluster in np.unique(assignment):
        members = np.flatnonzero(assignment == cluster)
        if len(members) == 1:
            continue  # a singleton: no evidence that it is typical of anything
        x = features[members]
        distances = 1 - x @ x.T
        np.fill_diagonal(distances, np.inf)
        k = min(TYPICAL_NEIGHBOURS, len(members) - 1)
        nearest = np.partition(distances, k - 1, axis=1)[:, :k]
        typicality[members] = 1 / (np.maximum(nearest.mean(axis=1), 0) + 1e-6)
    return typicality
