"""The DEQ Zoo projects: one package per zoo model."""
