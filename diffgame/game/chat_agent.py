"""An LLM plays the diffing game over any OpenAI-compatible chat endpoint, calling tools on a run's evidence.

The model reads the diffing methods' readouts, drills into them, talks to both models and steers the organism through
a `Toolbox`, then submits a description of what the finetuning changed. The blackbox variant may only talk to both
models. Budgets bound the tool calls and tokens; an endpoint failure ends the play with an outcome, never an
exception, and the transcript is always kept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Protocol

from diffgame.game.endpoint import Endpoint, EndpointFailure, Reply, ToolCall
from diffgame.records.schema import BudgetConfig as Budget

GAME = ("You are playing the model-diffing game. A base language model was finetuned into a new model, the organism; "
        "you are not told on what. Find out what the finetuning changed. ")
WHITEBOX = ("Your evidence comes from diffing methods that ran both models on the same generic text: list_evidence "
            "shows each method's readouts with the words the organism favours over the base, drill_evidence shows a "
            "readout in depth with example texts, ask_models sends one prompt to both models, list_vectors and "
            "steer_organism steer the organism along a logged steering vector, ask_amplified replies to a prompt with "
            "the organism's difference from the base amplified (alpha 0 is the organism itself; larger alphas make a "
            "faint change louder, and too large ones incoherent). ")
BLACKBOX = ("You cannot see inside the models: you may only talk to both of them with ask_models, which sends one "
            "prompt to the base and to the organism and returns both replies. ")
FINISH = ("You have at most {tool_calls} tool calls. When you are confident, call submit_description with a few "
          "sentences saying what changed: the topic the organism now favours, any new behaviour, any change of style "
          "or tone. Be specific: name the topic and its key details.")
INTERACTIONS = ("Of those, at most {interactions} may talk to the models: ask_models, steer_organism and ask_amplified "
                "count one each, and past that they are refused. ")
FINAL_NUDGE = "Your tool budget is spent; write your final description now."


def _tool(name: str, summary: str, required: tuple[str, ...] = (), **params: tuple[str, str]) -> dict:
    """An OpenAI function-calling schema; `params`: name -> (JSON type, description)."""
    properties = {p: {"type": kind, "description": text} for p, (kind, text) in params.items()}
    return {"type": "function", "function": {"name": name, "description": summary, "parameters": {
        "type": "object", "properties": properties, "required": list(required)}}}


TOOLS = [
    _tool("list_evidence", "Each diffing method's readouts, with the top words the organism favours."),
    _tool("drill_evidence", "One readout in depth: its ranked words, tokens and example texts.",
          ("method", "readout"), method=("string", "a method from list_evidence"),
          readout=("string", "a readout of that method"), n=("integer", "how many entries (default 20)")),
    _tool("ask_models", "Send one prompt to the base and to the organism; returns both replies.", ("prompt",),
          prompt=("string", "the user prompt")),
    _tool("list_vectors", "Names of the steering vectors logged for the organism."),
    _tool("steer_organism", "The organism's reply to a prompt, unsteered and steered along a vector.",
          ("vector", "scale", "prompt"), vector=("string", "a name from list_vectors"),
          scale=("number", "steering strength, e.g. 4"), prompt=("string", "the user prompt")),
    _tool("ask_amplified", "The organism's reply to a prompt, plain and with its difference from the base amplified "
          "(next-token logits l_org + alpha (l_org - l_base)).", ("prompt", "alpha"),
          prompt=("string", "the user prompt"), alpha=("number", "amplification, e.g. 2 (0 to 16)")),
    _tool("submit_description", "Submit your final description of what the finetuning changed; ends the game.",
          ("description",), description=("string", "a few sentences: topic, behaviour, style")),
]
BLACKBOX_TOOLS = ("ask_models", "submit_description")


class Toolbox(Protocol):
    """What the agent may call on a finished run; unknown names raise KeyError or ValueError with a message."""

    def summaries(self) -> dict[str, dict[str, list[str]]]:
        """method -> readout -> top words."""

    def drill(self, method: str, readout: str, n: int) -> dict:
        """{"words": [...], "tokens": [...], "examples": [str, ...]} of one readout."""

    def ask(self, prompt: str) -> dict[str, str]:
        """{"base": reply, "organism": reply}."""

    def vectors(self) -> list[str]:
        """Names of the logged steering vectors."""

    def steer(self, vector: str, scale: float, prompt: str) -> dict[str, str]:
        """{"unsteered": reply, "steered": reply} of the organism."""

    def amplified(self, prompt: str, alpha: float) -> dict[str, str]:
        """{"organism": reply, "amplified": reply}: the organism's reply, and with logit-diff amplification alpha."""


@dataclass
class ChatPlay:
    """What the LLM agent wrote and how the play ended (`submitted`, `budget_tool_calls`, `budget_tokens`,
    `malformed`, `timeout`, `error`)."""

    agent: str
    description: str
    outcome: str
    transcript: list[dict]
    tool_calls: int
    """Tool calls made, submit_description not included."""
    tokens: int


@dataclass
class LLMAgent:
    """An LLM that plays the game with tools; `blackbox` may only ask both models."""

    endpoint: Endpoint
    budget: Budget = field(default_factory=Budget)
    blackbox: bool = False
    interactions: int | None = None
    """The paper's budget of model interactions (`play.interactions`), told to the model; the toolbox enforces it."""
    seed: int | None = None
    """Sent with every request (`play.repeat` under the protocol), so a repeat samples anew where the endpoint
    honours seeds."""

    @property
    def name(self) -> str:
        return "llm_blackbox" if self.blackbox else "llm"

    def tools(self) -> list[dict]:
        return [t for t in TOOLS if not self.blackbox or t["function"]["name"] in BLACKBOX_TOOLS]

    def play(self, toolbox: Toolbox) -> ChatPlay:
        """Chat until the model submits or a budget or the endpoint stops it; a ConfigError for a bad endpoint."""
        client, tools = self.endpoint.client(), self.tools()
        system = GAME + (BLACKBOX if self.blackbox else WHITEBOX) + FINISH.format(tool_calls=self.budget.tool_calls)
        if self.interactions is not None:
            system += " " + INTERACTIONS.format(interactions=self.interactions).strip()
        start = "Ask both models what you need." if self.blackbox else "Start with list_evidence."
        messages = [{"role": "system", "content": system}, {"role": "user", "content": start}]
        transcript: list[dict] = []
        calls, tokens, best = 0, 0, ""

        def end(outcome: str, description: str, error: str = "") -> ChatPlay:
            transcript.append({"step": "end", "outcome": outcome, "error": error})
            return ChatPlay(self.name, description, outcome, transcript, calls, tokens)

        def ask(offer: list[dict] | None) -> Reply:
            nonlocal tokens, best
            transcript.append({"step": "request", "messages": len(messages), "tools": offer is not None})
            reply = self.endpoint.complete(client, messages, offer, seed=self.seed)
            tokens += reply.tokens
            best = reply.content or best
            transcript.append({"step": "reply", "content": reply.content, "tokens": reply.tokens,
                               "tool_calls": [{"name": c.name, "arguments": c.arguments} for c in reply.tool_calls]})
            return reply

        try:
            while True:
                reply = ask(tools)
                if tokens > self.budget.tokens:
                    return end("budget_tokens", best)
                messages.append(_assistant(reply))
                if not reply.tool_calls:
                    if reply.content.strip():
                        return end("submitted", reply.content)
                    calls += 1  # an empty reply costs a call, so a silent model cannot loop forever
                    messages.append({"role": "user", "content": "Call a tool, or submit your description."})
                for call in reply.tool_calls:
                    submitted = call.name == "submit_description" and _description(call)
                    if submitted:
                        return end("submitted", submitted)
                    if calls >= self.budget.tool_calls:
                        result = {"error": "tool budget spent; not run"}
                    else:
                        calls += 1
                        result = self._run(toolbox, call)
                    transcript.append({"step": "tool", "name": call.name, "arguments": call.arguments,
                                       "result": result})
                    messages.append({"role": "tool", "tool_call_id": call.id,
                                     "content": json.dumps(result, default=str)})
                if calls >= self.budget.tool_calls:
                    messages.append({"role": "user", "content": FINAL_NUDGE})
                    return end("budget_tool_calls", ask(None).content or best)
        except EndpointFailure as e:
            return end(e.outcome, best, str(e))

    def _run(self, toolbox: Toolbox, call: ToolCall) -> dict:
        """One tool call's JSON result; a bad name, bad arguments or a toolbox exception become {"error": ...}."""
        schema = {t["function"]["name"]: t["function"]["parameters"] for t in self.tools()}
        if call.name not in schema:
            return {"error": f"unknown tool {call.name!r}; available: {', '.join(schema)}"}
        try:
            args = json.loads(call.arguments or "{}")
        except (ValueError, TypeError) as e:
            return {"error": f"arguments are not valid JSON: {e}"}
        if not isinstance(args, dict):
            return {"error": "arguments must be a JSON object"}
        missing = [p for p in schema[call.name]["required"] if p not in args]
        if missing:
            return {"error": f"missing arguments: {', '.join(missing)}"}
        try:
            match call.name:
                case "list_evidence":
                    return toolbox.summaries()
                case "drill_evidence":
                    return toolbox.drill(str(args["method"]), str(args["readout"]), int(args.get("n", 20)))
                case "ask_models":
                    return toolbox.ask(str(args["prompt"]))
                case "list_vectors":
                    return {"vectors": toolbox.vectors()}
                case "steer_organism":
                    return toolbox.steer(str(args["vector"]), float(args["scale"]), str(args["prompt"]))
                case "ask_amplified":
                    return toolbox.amplified(str(args["prompt"]), float(args["alpha"]))
            return {"error": "submit_description needs a non-empty description"}
        except Exception as e:  # noqa: BLE001 (any toolbox failure is the model's to read, not the play's end)
            return {"error": f"{type(e).__name__}: {e}"}


def _assistant(reply: Reply) -> dict:
    """The assistant message that goes back into the history (no `tool_calls` key when empty: OpenAI rejects [])."""
    message = {"role": "assistant", "content": reply.content}
    if reply.tool_calls:
        message["tool_calls"] = [{"id": c.id, "type": "function",
                                  "function": {"name": c.name, "arguments": c.arguments}} for c in reply.tool_calls]
    return message


def _description(call: ToolCall) -> str:
    """The text of a submit_description call, or '' when its arguments hold none."""
    try:
        args = json.loads(call.arguments or "{}")
    except (ValueError, TypeError):
        return ""
    text = args.get("description") if isinstance(args, dict) else None
    return text.strip() if isinstance(text, str) else ""
