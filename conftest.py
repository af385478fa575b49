"""Repository-level conftest: the plugin itself is loaded through its pytest11 entry point.

``pytester`` runs pytest-in-pytest for the plugin's end-to-end tests.
"""

pytest_plugins = ["pytester"]
