"""Configuration: `schema` (value parsers, ranges, ConfigError; a leaf that imports nothing of
fastproxy) and `load` (TOML -> Config, which imports each feature's settings dataclass).
Feature packages import `config.schema` only, never `config.load`.
"""
