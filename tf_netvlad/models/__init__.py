"""The network and what runs it: backbones, `NetVLADModel` with its ranking-loss `train_step`
(model), `.keras` save/load (model_files), the loss (losses), descriptor extraction (extract), the
k-means and whitening initialisation (initialization) and model fingerprints (identity).
"""
