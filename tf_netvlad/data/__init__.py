"""Places and pixels: splits and reading and writing them (places, split_loading, dbstruct,
split_files, image_folders, layouts, utm), decoding and resizing one image (images, image_size) and
the `tf.data` image pipelines (pipelines); fileio holds the atomic file writes every writer uses.
No model code.
"""
