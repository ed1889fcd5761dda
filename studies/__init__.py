"""Studies behind the README's choices: not installed, not part of the product.

Run from the repository root, e.g. `.venv/bin/python -m studies.with_study_models ...` or
`studies/external_study.sh ...`; BUILD.md ("Scripts and studies") lists them.
"""
