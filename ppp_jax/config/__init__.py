"""Configuration as data: the typed YAML loader and every run-config section schema."""
