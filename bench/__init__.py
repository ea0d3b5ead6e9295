"""Benchmarks: the manual's procedure vs `pulumi up` on the lab (`make bench`)."""
