"""The data: from a folder or a table of labelled images to checked, decoded batches.

Owns finding splits and classes (`dataset`), labels from a CSV table (`table`), decoding any
image file (`images`), the data-set doctor (`check`), augmentation (`augment`) and the
tf.data pipeline (`pipeline`). It may import `smallcnn.runtime`; nothing about models.
"""
