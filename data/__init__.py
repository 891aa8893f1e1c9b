"""Dataset sources, importers, the store schema and the streaming loader.

Depends on nothing else in satpipe (dependencies point one way: pipeline, train -> data).
"""
