"""Using a trained model: predict, evaluate, test-time augmentation, export.

Owns the `Classifier` of a run folder and of an exported file (`predict`, `exported`),
streaming predictions to a file (`stream`), test-time augmentation (`tta`), per-class
evaluation (`evaluate`) and exporting to other formats (`export`). It may import
`smallcnn.runtime`, `smallcnn.data` and `smallcnn.model`; never training.
"""
