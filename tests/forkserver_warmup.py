"""Preloaded by the forkserver of tests/test_fork_threads.py: runs the library on several threads
before the server forks any child, as a preloaded module that warms up a model would."""

import torch

import flashattn_ext as fa

fa.set_num_threads(3)
_x = torch.randn(1, 256, 4, 64)
fa.attention(_x, _x, _x)
fa.set_num_threads(0)
