"""How numbers are taken: timing, peak memory, the skeleton and core probes, peers, and the worker protocol."""
