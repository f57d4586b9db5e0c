"""Answering "where was this photo taken?": the resumable on-disk index of database descriptors
(build, index, storage, zones) and localisation of new photos against it (localize).
"""
