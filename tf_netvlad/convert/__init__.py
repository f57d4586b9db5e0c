"""Published NetVLAD weights to tf_netvlad models: official MatConvNet files (matconvnet) and
pytorch-NetVlad / Patch-NetVLAD checkpoints (pytorch); common holds their shared argument checks.
"""
