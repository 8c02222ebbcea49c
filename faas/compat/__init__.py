"""Other SDKs' modules, as faas runs their projects (see :mod:`faas.compat.bauplan`).

This package's folder goes on the import path of function processes, so that a module
here answers an ``import`` of its name there; it is never installed under those names.
"""
