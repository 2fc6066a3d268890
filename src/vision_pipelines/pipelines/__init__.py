"""The pipeline templates, each instantiated once per dataset under its namespace."""

import functools
from collections.abc import Callable

from ..config import ConfigError


def naming_the_dataset(dataset: str, func: Callable) -> Callable:
    """``func``, whose errors name the dataset: a setting as ``fruits.predict.input`` (as
    ``hooks.ValidateParametersHook``'s do), and ``fruits`` where a message says ``<dataset>``
    (``--pipelines=<dataset>``). Signature and type hints (which Kedro builds the typed settings
    from) are ``func``'s."""

    @functools.wraps(func)
    def node(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except ConfigError as error:
            raise ConfigError(f"{dataset}.{error}".replace("<dataset>", dataset)) from None
        except Exception as error:
            if error.args and isinstance(error.args[0], str):  # the message: same error, same traceback
                error.args = (error.args[0].replace("<dataset>", dataset), *error.args[1:])
            raise

    return node
