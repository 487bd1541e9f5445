"""The runtime of a trained TinyBeauty: checkpoint loading, the intensity blend, ONNX export and sessions, video."""
