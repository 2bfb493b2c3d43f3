"""One intra-op thread for the whole suite: the test models are tiny, and on 2 shared cores torch's default
threads wait on each other (measured: 73 s with default threads, 37 s with one, on a loaded 2-core machine;
the same 21 s either way when idle). Subprocesses the tests start inherit the environment variables."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402  (after the variables, so its thread pools start with them)

torch.set_num_threads(1)
