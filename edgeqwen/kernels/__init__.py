"""Numba kernels: arrays and scalars in, arrays out. No package objects cross this wall."""
