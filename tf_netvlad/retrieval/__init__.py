"""Answering "where was this photo taken?": the resumable on-disk index of database descriptors
(index, storage) and localisation of new photos against it (localize).
"""
