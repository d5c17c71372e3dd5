"""ONNX export of fast samplers: checkpoint dir -> artifact dir (policy.onnx [+ init.onnx] + manifest.json).

The manifest schema is robotstack/core/manifest.py; the only loader is robotstack/runtime/artifact.py.
`onnx_export` / `graphs` / `tiny` need torch and policies; nothing is imported here.
"""
