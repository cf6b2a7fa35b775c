"""Bytes to named, memory-mapped arrays. Knows nothing about Qwen."""

from .safetensors import SafetensorsFile, TensorStore, open_safetensors_dir

__all__ = ["SafetensorsFile", "TensorStore", "open_safetensors_dir"]
