"""Ranking sources by bKLD: the exact index and its kernels, the CPU's kernel choice, shard
placement and top-k merging, hubness reduction, and the image-count stability curve."""
