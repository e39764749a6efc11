"""The demo, the replication grid and the GPU check: python -m scripts.demo, scripts.paper, scripts.gpu_check."""
