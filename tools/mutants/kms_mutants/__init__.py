"""kms's mutation check (``make mutants``): a tool beside kms, not part of it (README.md)."""
