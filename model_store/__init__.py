"""The model store: model directories, loading, the demo models.

`python -m model_store list` and `python -m model_store build-demo`.
"""
