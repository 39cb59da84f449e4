"""One OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, llama.cpp, Ollama...): its settings, its client and
one request whose failures come back as an outcome (`timeout`, `malformed`, `error`) instead of an exception.

`openai` is imported only when a client is made, so importing diffgame stays fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import NamedTuple

from diffgame.errors import ConfigError
from diffgame.records.schema import EndpointConfig

NO_KEY = "not-needed"
"""The key sent when the key's variable is unset: local servers ignore it."""


class ToolCall(NamedTuple):
    id: str
    name: str
    arguments: str
    """The raw JSON the model wrote; it may be invalid."""


@dataclass
class Reply:
    """One assistant message: its text, the tools it calls and the tokens it cost."""

    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    tokens: int = 0
    """`usage.total_tokens`, or len(text) // 4 when the server reports no usage."""


class EndpointFailure(Exception):
    """A request that got no usable reply; `outcome` is `timeout`, `malformed` or `error`."""

    def __init__(self, outcome: str, message: str):
        super().__init__(message)
        self.outcome = outcome


@dataclass
class Endpoint(EndpointConfig):
    """Where the chat model is served and how to ask it (the fields of `play.endpoint`)."""

    def client(self):
        """An `openai.OpenAI` client for this endpoint (no retries: a failure is an outcome, not a wait)."""
        if not self.model:
            raise ConfigError("no chat model set: set play.endpoint.model=<name> (the model name the endpoint serves)")
        import openai

        return openai.OpenAI(base_url=self.base_url, api_key=os.environ.get(self.api_key_env) or NO_KEY,
                             timeout=self.timeout_s, max_retries=0)

    def complete(self, client, messages: list[dict], tools: list[dict] | None = None, seed: int | None = None
                 ) -> Reply:
        """One chat request (`tools=None` offers none; `seed` where given); an EndpointFailure when no usable reply
        comes back."""
        import openai

        extra = ({} if tools is None else {"tools": tools}) | ({} if seed is None else {"seed": seed})
        try:
            reply = client.chat.completions.create(model=self.model, messages=messages,
                                                   temperature=self.temperature, **extra)
            return _parse(reply)
        except openai.APITimeoutError as e:  # before APIConnectionError, its parent
            raise EndpointFailure("timeout", f"no reply within {self.timeout_s:g} s: {e}") from e
        except (openai.APIResponseValidationError, ValueError, AttributeError, TypeError, IndexError) as e:
            # openai parses a 200 body leniently: non-JSON raises JSONDecodeError (a ValueError), `{}` or a list
            # comes back as an object whose missing fields fail on access
            raise EndpointFailure("malformed", f"unusable reply: {type(e).__name__}: {e}") from e
        except openai.APIError as e:  # connection refused, HTTP 4xx/5xx
            raise EndpointFailure("error", f"{type(e).__name__}: {e}") from e


def _parse(reply) -> Reply:
    """The first choice's message; a missing or mistyped part raises (ValueError, TypeError, ...)."""
    message = reply.choices[0].message
    if message is None:
        raise ValueError("the reply's choices[0] has no message")
    content = message.content or ""
    if not isinstance(content, str):
        raise TypeError(f"message content is {type(content).__name__}, not text")
    calls = [ToolCall(str(c.id), str(c.function.name), c.function.arguments or "") for c in message.tool_calls or []]
    total = getattr(getattr(reply, "usage", None), "total_tokens", None)
    tokens = total if isinstance(total, int) else (len(content) + sum(len(c.arguments) for c in calls)) // 4
    return Reply(content, calls, tokens)
