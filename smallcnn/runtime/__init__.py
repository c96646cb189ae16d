"""The runtime: what the tool runs on, below every other concept.

Owns the frozen base's engines (LiteRT, TensorFlow), devices and precision (`tf.distribute`),
the on-disk cache, the exported formats' runtimes, atomic file writes, figures, stop signals,
timings, and keeping TensorFlow quiet. It may import `smallcnn.errors` and
`smallcnn.progress` only: nothing here knows about data sets, models or training.
"""
