"""ONNX export of fast samplers + the torch-free artifact loader.

`robotstack.export.artifact` imports only numpy, json, hashlib and onnxruntime (the on-robot runtime uses it);
`robotstack.export.onnx_export` / `graphs` need torch and policies. Nothing is imported here, so importing the
package never pulls in torch.
"""
