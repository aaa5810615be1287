"""TOML configs: ``default.toml`` holds every key with its default."""
