"""Kernels for the k-WTA operator: a plain reference, a fast CPU path and fused Triton kernels.

Nothing here knows about models; `kwta` builds on these.
"""
