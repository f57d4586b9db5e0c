"""Deployment: the versioned SavedModel for TensorFlow Serving and the ONNX file (saved_model), the
Serving side files (serving_files: warmup requests, metadata, example configs) and the REST / gRPC
client (client).
"""
