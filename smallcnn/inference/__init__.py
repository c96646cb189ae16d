"""Using a trained model: predict, evaluate, test-time augmentation, export.

Owns what every classifier does, from image files to `Prediction`s (`classifier`), the
`Classifier` of a run folder with `load` (`predict`) and the `ExportedClassifier` of an
exported file (`exported`), streaming predictions to a file (`stream`), test-time
augmentation (`tta`), per-class evaluation (`evaluate`) and exporting to other formats
(`export`). It may import `smallcnn.runtime`, `smallcnn.data` and `smallcnn.model`; never
training.
"""
