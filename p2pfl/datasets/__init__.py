"""Data sets that need no download, and ways to split them across nodes."""

from p2pfl.datasets.digits import load_digits
from p2pfl.datasets.partition import dirichlet_split, iid_split, labels_of, take

__all__ = ["dirichlet_split", "iid_split", "labels_of", "load_digits", "take"]
