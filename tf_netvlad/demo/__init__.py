"""The embedded default: a procedurally rendered street-view dataset (dataset, scene, render) and
the `tf_netvlad demo` main job that trains and evaluates on it (run).
"""
