"""Backends: one interface (load a graph, run it with named tensors) for each runtime."""
