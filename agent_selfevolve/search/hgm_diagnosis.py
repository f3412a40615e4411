"""HGM's expansion operator: the diagnosis prompt and the parsing of its reply into a child variant."""

from __future__ import annotations

from agent_selfevolve.infra import parse_json_object
from agent_selfevolve.models.base import Message
from agent_selfevolve.search.records import Variant
from agent_selfevolve.search.summary import head_tail

DIAGNOSIS_SYSTEM = """You improve a software-engineering agent by changing its configuration, not its code. \
The agent gets an issue and a repository, and its first prompt holds an *approach* (strategy) and *guidance* \
text that you control. You see summaries of its attempts at the issue and how each one scored. Diagnose why \
they failed, then write a new strategy and guidance that avoid those failures: concrete, actionable, short."""

DIAGNOSIS_FORMAT = """Reply with one JSON object in a ```json block:
{"diagnosis": "<why the attempts failed>", "strategy": "<approach, one or two sentences>",
 "guidance": "<advice for the next attempts, at most 10 lines>", "temperature": <number 0..1.2, optional>}"""


def diagnosis_messages(problem: str, variant: Variant, summaries: list[str], previous_diagnosis: str,
                       all_failed: bool | None) -> list[Message]:
    """The operator prompt: the public issue, the parent's variant and its attempt summaries; no hidden tests.

    `all_failed=None` (an oracle run: failure would be a hidden-test verdict) labels the attempts neutrally."""
    params = variant.get("model_params") or {}
    parts = [f"<issue>\n{head_tail(problem, 4000)}\n</issue>",
             "Current agent configuration:\n"
             f"strategy: {variant.get('strategy') or '(none)'}\nguidance: {variant.get('guidance') or '(none)'}\n"
             f"temperature: {params.get('temperature', 'default')}"]
    if previous_diagnosis:
        parts.append(f"Diagnosis that produced this configuration:\n{previous_diagnosis}")
    label = ("Attempts" if all_failed is None else "Failed attempts" if all_failed
             else "Attempts (none failed; make the agent more reliable)")
    parts.append(f"{label} with this configuration:\n\n" + "\n\n".join(summaries or ["(no summaries available)"]))
    parts.append(DIAGNOSIS_FORMAT)
    return [{"role": "system", "content": DIAGNOSIS_SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]


def parse_variant(text: str, parent: Variant) -> tuple[Variant, str]:
    """(child variant, diagnosis) from the operator's reply; fields it leaves out are inherited.

    A reply that is not JSON becomes the child's guidance, so a chatty operator still changes something.
    """
    data = parse_json_object(text)
    params = dict(parent.get("model_params") or {})
    if not isinstance(data, dict):
        guidance = text.strip()[:2000]
        return Variant(strategy=parent.get("strategy", ""), guidance=guidance or parent.get("guidance", ""),
                       model_params=params), guidance
    temp = data.get("temperature")
    if isinstance(temp, int | float) and not isinstance(temp, bool):
        params["temperature"] = round(min(1.2, max(0.0, float(temp))), 3)
    variant = Variant(strategy=str(data.get("strategy") or parent.get("strategy", ""))[:1000],
                      guidance=str(data.get("guidance") or parent.get("guidance", ""))[:2000], model_params=params)
    return variant, str(data.get("diagnosis", ""))[:2000]
