"""Python client of Sealmem: encrypted, access-controlled long-term memory for LLM apps.

>>> from sealmem_client import Sealmem
>>> client = Sealmem()  # SEALMEM_URL, SEALMEM_API_KEY
>>> client.memories.add("Prefers window seats.", subject="user-42")

:class:`Sealmem` blocks, :class:`AsyncSealmem` awaits; both have the same resources (``memories``, ``tokens``,
``chat``, ``sessions``, ``admin``, ``health``) and raise the exceptions of :mod:`sealmem_client.errors`.
The LangChain adapter is :mod:`sealmem_client.langchain` (``pip install "sealmem-client[langchain]"``).
"""

from sealmem_client._core import NOT_GIVEN, NotGiven, RetryPolicy, __version__
from sealmem_client.client import AsyncSealmem, ClientOptions, Sealmem
from sealmem_client.errors import *  # noqa: F403 (the exception classes, listed in errors.__all__)
from sealmem_client.errors import __all__ as _errors
from sealmem_client.models import *  # noqa: F403 (the response models, listed in models.__all__)
from sealmem_client.models import __all__ as _models
from sealmem_client.streams import AsyncChatStream, ChatStream

__all__ = [
    "NOT_GIVEN",
    "AsyncChatStream",
    "AsyncSealmem",
    "ChatStream",
    "ClientOptions",
    "NotGiven",
    "RetryPolicy",
    "Sealmem",
    "__version__",
    *_errors,
    *_models,
]
