"""The Keras layers of the network: `NetVLAD` (netvlad), `PCAWhitening` and its NumPy fit (whitening),
`ImagePreprocessing` (preprocessing). They use `keras.ops` only and import nothing else of tf_netvlad
but `defaults`.
"""
