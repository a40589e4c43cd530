"""The runtime: what runs a bundle, exactly as its manifest says (reference runner, wire encodings,
the tier server and its client).

May import: ``splitc.errors`` and numpy / ONNX Runtime only, never the compiler (a device installs it
without torch).
"""
