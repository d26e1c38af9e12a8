"""Fathom operator: runs Fathom-R1-style post-training recipes as ordered GPU Jobs on Kubernetes."""

__version__ = "0.1.0"
