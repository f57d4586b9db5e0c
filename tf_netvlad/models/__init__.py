"""The network and what runs it: backbones, `NetVLADModel` with its ranking-loss `train_step` and
`.keras` save/load (model), the loss (losses), descriptor extraction (extract), the k-means and
whitening initialisation (initialization) and model fingerprints (identity).
"""
