"""A finished run as one portable ONNX file (``cli export RUN --out FILE.onnx``): the backbone's preprocessing,
the network with the run's taps pooled, the flipped view when the run uses TTA, the head, and the open-set
score, in one graph that plain ``onnxruntime`` runs. ``contract.py`` is the file's contract (inputs, outputs,
metadata), which ``clothprobe.serve`` reads without TensorFlow."""
