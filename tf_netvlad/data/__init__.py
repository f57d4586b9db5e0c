"""Places and pixels: reading and writing splits (places, split_files, utm), decoding and resizing
one image (images, image_size) and the `tf.data` image pipelines (pipelines); fileio holds the
atomic file writes every writer uses. No model code.
"""
