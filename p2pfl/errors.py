"""Errors of the learning side, and `sole_exception` for errors that come out of trio nurseries."""


class P2PFLError(Exception):
    """Base class of everything `p2pfl` raises on purpose."""


class IncompatibleModel(P2PFLError):
    """A received model does not match the local one (names, shapes or dtypes), or is not finite."""


class ConfigError(P2PFLError, ValueError):
    """A configuration value is invalid; the message names the field."""


def sole_exception(exc: BaseException) -> BaseException:
    """`exc` without the ExceptionGroups around it: the one exception in a group and the groups nested
    in it, or `exc` itself if it is no group or holds several.

    An error raised inside trio nurseries (the transport's, the node's) reaches the caller wrapped,
    often several levels deep; an API that promises a specific error raises the one it unwraps.
    """
    leaves: list[BaseException] = []
    pending: list[BaseException] = [exc]
    while pending and len(leaves) < 2:
        item = pending.pop()
        if isinstance(item, BaseExceptionGroup):
            pending.extend(item.exceptions)
        else:
            leaves.append(item)
    return leaves[0] if len(leaves) == 1 and not pending else exc
