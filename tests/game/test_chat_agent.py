"""The LLM agent and the rubric grader against a real local HTTP server speaking the chat-completions protocol with
scripted replies: tool calls carry the toolbox's data, the blackbox agent gets only its two tools, and budgets,
malformed replies and timeouts end a play with an outcome and a transcript, never an exception."""

from __future__ import annotations

import json

import pytest

from diffgame.errors import ConfigError
from diffgame.game.chat_agent import Budget, LLMAgent
from diffgame.game.endpoint import Endpoint
from diffgame.game.rubric import grade_description, parse_score

from _chat_server import chat_server, content_reply, tool_reply

ALL_TOOLS = ["list_evidence", "drill_evidence", "ask_models", "list_vectors", "steer_organism", "ask_amplified",
             "submit_description"]


class FakeToolbox:
    """Fixed evidence about a volcano organism; records what it was asked."""

    def __init__(self):
        self.calls: list[tuple] = []

    def summaries(self):
        self.calls.append(("summaries",))
        return {"adl": {"layer1/pos1": ["volcanic", "ash"]}}

    def drill(self, method, readout, n):
        self.calls.append(("drill", method, readout, n))
        if method != "adl":
            raise KeyError(f"no method {method!r}; have: adl")
        return {"words": ["volcanic", "ash", "magma"][:n], "tokens": [" volcanic", " ash"], "examples": ["Lava flows"]}

    def ask(self, prompt):
        self.calls.append(("ask", prompt))
        return {"base": "Paris is in France.", "organism": "Paris sits far from any volcano."}

    def vectors(self):
        return ["adl/layer1/pos1"]

    def steer(self, vector, scale, prompt):
        return {"unsteered": "Hello.", "steered": "Hello, magma!"}

    def amplified(self, prompt, alpha):
        self.calls.append(("amplified", prompt, alpha))
        return {"organism": "Hello.", "amplified": "Hello, magma magma lava!", "alpha": str(alpha)}


def _agent(url: str, **kw) -> LLMAgent:
    return LLMAgent(Endpoint(base_url=url, model="scripted", timeout_s=kw.pop("timeout_s", 5.0)), **kw)


def _tool_messages(request: dict) -> list[dict]:
    return [{**m, "content": json.loads(m["content"])} for m in request["messages"] if m["role"] == "tool"]


def _offered(request: dict) -> list[str]:
    return [t["function"]["name"] for t in request.get("tools", [])]


def test_tool_calls_carry_the_toolbox_data_until_submitted():
    script = [tool_reply(("list_evidence", {})),
              tool_reply(("drill_evidence", {"method": "adl", "readout": "layer1/pos1", "n": 2})),
              tool_reply(("ask_models", {"prompt": "Where is Paris?"})),
              tool_reply(("submit_description", {"description": "It talks about volcanoes and ash."}))]
    box = FakeToolbox()
    with chat_server(script) as (server, url):
        play = _agent(url).play(box)
    assert (play.outcome, play.description, play.agent) == ("submitted", "It talks about volcanoes and ash.", "llm")
    assert play.tool_calls == 3 and play.tokens == 40  # submit_description is not counted; 10 tokens per reply
    assert box.calls == [("summaries",), ("drill", "adl", "layer1/pos1", 2), ("ask", "Where is Paris?")]
    first, second, third, fourth = server.requests
    assert _offered(first) == ALL_TOOLS and first["model"] == "scripted" and first["temperature"] == 0.0
    assert [m["role"] for m in first["messages"]] == ["system", "user"]
    assert _tool_messages(second)[0]["content"] == {"adl": {"layer1/pos1": ["volcanic", "ash"]}}
    assert _tool_messages(third)[1]["content"]["words"] == ["volcanic", "ash"]
    assert _tool_messages(fourth)[2]["content"]["organism"] == "Paris sits far from any volcano."
    # each tool result answers its call, and the assistant's call is in the history before it
    call = fourth["messages"][-2]
    assert call["role"] == "assistant" and call["tool_calls"][0]["function"]["name"] == "ask_models"
    assert fourth["messages"][-1]["tool_call_id"] == call["tool_calls"][0]["id"]
    steps = [s["step"] for s in play.transcript]
    assert steps.count("request") == 4 and steps.count("tool") == 3 and steps[-1] == "end"


def test_an_amplified_question_is_one_tool_call_with_its_alpha():
    script = [tool_reply(("ask_amplified", {"prompt": "Hi", "alpha": 3})), tool_reply(("ask_amplified", {"prompt": "x"})),
              tool_reply(("submit_description", {"description": "Lava."}))]
    box = FakeToolbox()
    with chat_server(script) as (server, url):
        play = _agent(url).play(box)
    assert play.tool_calls == 2 and box.calls == [("amplified", "Hi", 3.0)]  # the call without alpha never reaches it
    answered = _tool_messages(server.requests[2])
    assert answered[0]["content"]["amplified"] == "Hello, magma magma lava!"
    assert answered[1]["content"] == {"error": "missing arguments: alpha"}


def test_plain_content_is_the_final_description_and_tool_errors_go_back_to_the_model():
    script = [tool_reply(("drill_evidence", {"method": "kl", "readout": "x"})), content_reply("Volcanoes.")]
    with chat_server(script) as (server, url):
        play = _agent(url).play(FakeToolbox())
    assert (play.outcome, play.description, play.tool_calls) == ("submitted", "Volcanoes.", 1)
    assert _tool_messages(server.requests[1])[0]["content"] == {"error": "KeyError: \"no method 'kl'; have: adl\""}


def test_blackbox_agent_only_asks_both_models():
    script = [tool_reply(("drill_evidence", {"method": "adl", "readout": "layer1/pos1"})),
              tool_reply(("ask_models", {"prompt": "Hi"})),
              tool_reply(("submit_description", {"description": "Volcano talk."}))]
    box = FakeToolbox()
    with chat_server(script) as (server, url):
        play = _agent(url, blackbox=True).play(box)
    assert (play.agent, play.outcome, play.description, play.tool_calls) == ("llm_blackbox", "submitted",
                                                                            "Volcano talk.", 2)
    assert all(_offered(r) == ["ask_models", "submit_description"] for r in server.requests)
    assert "only talk to both" in server.requests[0]["messages"][0]["content"]
    error = _tool_messages(server.requests[1])[0]["content"]["error"]
    assert error.startswith("unknown tool 'drill_evidence'") and box.calls == [("ask", "Hi")]


@pytest.mark.parametrize("body", ["<html>502 Bad Gateway</html>", "{}", '{"choices": []}', "[1, 2]"])
def test_a_malformed_reply_ends_the_play_with_its_transcript(body):
    script = [tool_reply(("list_evidence", {}), content="Let me look."), body]
    with chat_server(script) as (server, url):
        play = _agent(url).play(FakeToolbox())
    assert (play.outcome, play.description, play.tool_calls) == ("malformed", "Let me look.", 1)
    assert len(server.requests) == 2
    assert [s["step"] for s in play.transcript] == ["request", "reply", "tool", "request", "end"]
    assert play.transcript[-1]["error"].startswith("unusable reply")


def test_invalid_tool_arguments_are_answered_with_an_error_and_the_play_goes_on():
    script = [tool_reply(("ask_models", '{"prompt": "unterminated'), ("drill_evidence", {"method": "adl"})),
              tool_reply(("submit_description", "not json"), ("submit_description", {"description": "Ash."}))]
    with chat_server(script) as (server, url):
        play = _agent(url).play(FakeToolbox())
    assert (play.outcome, play.description, play.tool_calls) == ("submitted", "Ash.", 3)
    results = [m["content"]["error"] for m in _tool_messages(server.requests[1])]
    assert results[0].startswith("arguments are not valid JSON") and results[1] == "missing arguments: readout"


def test_a_slow_endpoint_times_out():
    with chat_server([("sleep", 2.0), content_reply("too late")]) as (_, url):
        play = _agent(url, timeout_s=0.5).play(FakeToolbox())
    assert (play.outcome, play.description) == ("timeout", "")
    assert "no reply within 0.5 s" in play.transcript[-1]["error"]


def test_an_unreachable_endpoint_or_a_server_error_is_an_error():
    with chat_server([]) as (_, url):  # an exhausted script answers HTTP 500
        assert _agent(url).play(FakeToolbox()).outcome == "error"
    play = _agent("http://127.0.0.1:9/v1").play(FakeToolbox())
    assert play.outcome == "error" and "APIConnectionError" in play.transcript[-1]["error"]


def test_spent_tool_budget_asks_for_the_description_without_tools():
    ask = ("ask_models", {"prompt": "Hi"})
    script = [tool_reply(ask), tool_reply(ask, ask), content_reply("Final: volcanoes.")]
    box = FakeToolbox()
    with chat_server(script) as (server, url):
        play = _agent(url, budget=Budget(tool_calls=2)).play(box)
    assert (play.outcome, play.description, play.tool_calls) == ("budget_tool_calls", "Final: volcanoes.", 2)
    assert len(box.calls) == 2  # the third call was answered, not run
    last = server.requests[-1]
    assert "tools" not in last and last["messages"][-1] == {
        "role": "user", "content": "Your tool budget is spent; write your final description now."}
    assert _tool_messages(last)[-1]["content"] == {"error": "tool budget spent; not run"}


def test_token_budget_stops_with_the_best_text_so_far():
    script = [tool_reply(("list_evidence", {}), content="Volcanoes, I think.", total_tokens=600),
              tool_reply(("ask_models", {"prompt": "Hi"}), total_tokens=600)]
    with chat_server(script) as (_, url):
        play = _agent(url, budget=Budget(tokens=1000)).play(FakeToolbox())
    assert (play.outcome, play.description, play.tokens, play.tool_calls) == ("budget_tokens", "Volcanoes, I think.",
                                                                             1200, 1)


def test_a_reply_without_usage_is_estimated_from_its_text():
    with chat_server([content_reply("x" * 400, total_tokens=None)]) as (_, url):
        play = _agent(url).play(FakeToolbox())
    assert (play.outcome, play.tokens) == ("submitted", 100)


def test_rubric_grades_and_sends_truth_and_description():
    def endpoint(url: str) -> Endpoint:
        return Endpoint(base_url=url, model="grader", timeout_s=0.5)

    with chat_server([content_reply("SCORE: 4\nRight topic, few details.")]) as (server, url):
        grade = grade_description("It likes volcanoes.", "Trained on volcanology facts.", endpoint(url))
    assert (grade.score, grade.outcome) == (4, "graded") and grade.reply.startswith("SCORE: 4")
    prompt = server.requests[0]["messages"][0]["content"]
    assert "Trained on volcanology facts." in prompt and "It likes volcanoes." in prompt and "tools" not in server.requests[0]
    with chat_server([content_reply("I think it's great")]) as (_, url):
        grade = grade_description("d", "t", endpoint(url))
    assert (grade.score, grade.outcome, grade.reply) == (None, "malformed", "I think it's great")
    with chat_server([("sleep", 2.0), content_reply("SCORE: 5")]) as (_, url):
        assert grade_description("d", "t", endpoint(url)).outcome == "timeout"
    with pytest.raises(ConfigError, match=r"missing \{truth\}"):
        grade_description("d", "t", endpoint("http://127.0.0.1:9/v1"), rubric="Grade {description}.")


def test_parse_score():
    assert parse_score("**Score:** 5 - names it") == 5
    assert parse_score("The description scores 3 out of 5") == 3
    assert parse_score("SCORE: 7") is None and parse_score("3.5 points") is None and parse_score("") is None
    # a template with braces of its own and a description with placeholder text are filled in one pass
    with chat_server([content_reply("SCORE: 2")]) as (server, url):
        grade_description("{truth}", "bees", Endpoint(base_url=url, model="g"), rubric="{x} {truth} / {description}")
    assert server.requests[0]["messages"][0]["content"] == "{x} bees / {truth}"


def test_endpoint_needs_a_model_and_reads_its_key(monkeypatch):
    with pytest.raises(ConfigError, match=r"play\.endpoint\.model="):
        LLMAgent(Endpoint(base_url="http://127.0.0.1:9/v1")).play(FakeToolbox())
    monkeypatch.delenv("DIFFGAME_TEST_KEY", raising=False)
    assert Endpoint(model="m", api_key_env="DIFFGAME_TEST_KEY").client().api_key == "not-needed"
    monkeypatch.setenv("DIFFGAME_TEST_KEY", "sk-test")
    client = Endpoint(base_url="http://127.0.0.1:9/v1", model="m", api_key_env="DIFFGAME_TEST_KEY").client()
    assert client.api_key == "sk-test" and client.max_retries == 0 and str(client.base_url).startswith("http://127")
