# Root conftest: pytester drives real pytest sessions against the embedded model in tests/.
pytest_plugins = ("pytester",)
