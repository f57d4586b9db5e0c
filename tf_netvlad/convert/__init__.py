"""Published NetVLAD weights to tf_netvlad models: official MatConvNet files (matconvnet) and
pytorch-NetVlad / Patch-NetVLAD checkpoints (pytorch); common holds their shared argument checks.
pretrained holds the table of published weights and loads them by name; download holds the cache,
the checked downloads and `--model` URIs.
"""
