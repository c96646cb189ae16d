"""The model: conv bases, the head on top, and the run folder that holds a trained one.

Owns the registry of bases and their weights (`bases`, `efficientnet_lite`, `weights/`), the
preprocessing layers (`layers`), building and compiling classifiers (`networks`), the dense
head trained in NumPy (`head`), extract's model file (`modelfile`) and run folders (`runs`).
It may import `smallcnn.runtime`; not the data pipeline, training or inference.
"""
