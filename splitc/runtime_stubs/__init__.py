"""Reference runners that load a bundle and execute it exactly as its manifest says."""
