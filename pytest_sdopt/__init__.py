"""pytest-sdopt: regression tests for the speed, memory and image quality of Stable Diffusion optimizations.

This package is the pytest plugin (`pytest -p pytest_sdopt`): the hooks live in
`pytest_sdopt.plugin` and are re-exported here so the package itself is the registered
plugin. Importing it does not import torch or diffusers.
"""

from pytest_sdopt.plugin import (
    pytest_addhooks,
    pytest_addoption,
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_ignore_collect,
    pytest_report_header,
    pytest_sessionfinish,
    pytest_terminal_summary,
    pytest_testnodedown,
    sdopt,
)

__version__ = "0.1.0"
__all__ = ["pytest_addhooks", "pytest_addoption", "pytest_collection_modifyitems", "pytest_configure", "pytest_ignore_collect",
           "pytest_report_header", "pytest_sessionfinish", "pytest_terminal_summary", "pytest_testnodedown", "sdopt",
           "__version__"]
