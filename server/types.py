"""Type aliases shared across the gateway."""

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

ASGIScope = MutableMapping[str, Any]
ASGIMessage = MutableMapping[str, Any]
ASGIReceive = Callable[[], Awaitable[ASGIMessage]]
ASGISend = Callable[[ASGIMessage], Awaitable[None]]
JSONObject = dict[str, Any]
