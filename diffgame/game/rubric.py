"""An LLM grades an agent's description against the organism's ground truth on a 1-5 rubric, over any
OpenAI-compatible chat endpoint; an endpoint failure or a reply without a score is an outcome, never an exception."""

from __future__ import annotations

import re
from dataclasses import dataclass

from diffgame.errors import ConfigError
from diffgame.game.endpoint import Endpoint, EndpointFailure

DEFAULT_RUBRIC = """\
A language model was finetuned. Here is what the finetuning actually taught it:

<truth>
{truth}
</truth>

Someone who could not see the training data studied the finetuned model and described what changed:

<description>
{description}
</description>

Score from 1 to 5 how well the description matches what the finetuning taught:
5 = names the specific topic or behaviour and its key details
4 = the right topic or behaviour, but missing details
3 = partly right, or the right general area
2 = vague, or mostly wrong
1 = wrong or empty

Answer with the score first, as `SCORE: <1-5>`, then one sentence saying why."""
PLACEHOLDERS = ("{truth}", "{description}")
_SCORE = re.compile(r"score\W{0,5}(\d+)", re.IGNORECASE)
_DIGIT = re.compile(r"(?<![\w.])([1-5])(?![\w.])")


@dataclass
class RubricGrade:
    score: int | None
    """1-5; None when the grader gave no usable score."""
    outcome: str
    """`graded`, `malformed` (no score in 1-5), `timeout` or `error`."""
    reply: str
    """The grader's reply ('' when none came back)."""
    error: str = ""


def parse_score(reply: str) -> int | None:
    """The integer after 'SCORE' if it is 1-5, else the first standalone digit 1-5; None when there is none."""
    if m := _SCORE.search(reply):
        return int(m[1]) if 1 <= int(m[1]) <= 5 else None
    m = _DIGIT.search(reply)
    return int(m[1]) if m else None


def grade_description(description: str, truth: str, endpoint: Endpoint, rubric: str = DEFAULT_RUBRIC) -> RubricGrade:
    """One chat request asking the grader to score `description` against `truth`."""
    missing = [p for p in PLACEHOLDERS if p not in rubric]
    if missing:
        raise ConfigError(f"the rubric template must contain {' and '.join(PLACEHOLDERS)}; missing {', '.join(missing)}")
    values = {"truth": truth, "description": description}
    prompt = re.sub(r"\{(truth|description)\}", lambda m: values[m[1]], rubric)  # one pass: no brace escaping needed
    client = endpoint.client()
    try:
        reply = endpoint.complete(client, [{"role": "user", "content": prompt}]).content
    except EndpointFailure as e:
        return RubricGrade(None, e.outcome, "", str(e))
    score = parse_score(reply)
    return RubricGrade(score, "graded" if score is not None else "malformed", reply)
