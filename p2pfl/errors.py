"""Errors of the learning side."""


class P2PFLError(Exception):
    """Base class of everything `p2pfl` raises on purpose."""


class IncompatibleModel(P2PFLError):
    """A received model does not match the local one (names, shapes or dtypes), or is not finite."""


class ConfigError(P2PFLError, ValueError):
    """A configuration value is invalid; the message names the field."""
