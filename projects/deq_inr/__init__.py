"""DEQ-INR: implicit layers for implicit representations (Huang, Bai, Kolter, NeurIPS 2021)."""
