"""Implicit graph neural networks (Gu et al., NeurIPS 2020, arXiv 2009.06211) for the DEQ Zoo."""
