"""Where results go: the atomic one-file-per-point store and the context that makes a result reproducible."""
