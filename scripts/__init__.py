"""Scripts users run besides the jobs; run as modules from the repository root (python -m scripts.NAME)."""
