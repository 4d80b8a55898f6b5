"""MobileAST_Light low-complexity acoustic scene classification pipeline."""
import os

# torch's C++ log prints a deprecation line for every quantize_per_tensor op of an
# int8 TorchScript model; Python's warnings filters cannot catch it, and the level
# is read when torch is first imported. Users can still set it themselves.
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
