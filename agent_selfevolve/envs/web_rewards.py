"""Rewards any web app can declare in its task file, checked by the environment after the episode.

A reward spec is a tree: leaves read the final page (`url`, `text`, `js`) or ask the app's own server (`http`,
loopback only, redirects never followed), and `all` / `any` combine them. The agent's `stop` answer is no input
of any check: only the state the agent left behind counts. Specs are parsed when the task file loads, so a typo
fails before any attempt runs, naming the field's dotted path (`reward.all.1.text.matches`).
"""

from __future__ import annotations

import contextlib
import fnmatch
import ipaddress
import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from agent_selfevolve.envs.base import Evaluation

CHECK_KINDS = ("url", "text", "js", "http", "all", "any")
LEGACY_KEYS = frozenset({"type", "seed", "check", "args", "answer", "match"})
"""Reward keys of the older forms: MiniWoB++ page globals, the bundled apps' `check`, an expected `answer`."""
HTTP_OPS = ("equals", "contains", "matches", "exists", "length")
_MISSING = object()


class SpecError(ValueError):
    """A malformed reward or app spec; `field` is the dotted path of the offending field."""

    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(f"field '{field}': {message}")


@dataclass(frozen=True)
class UrlCheck:
    """The final URL matches a glob (whole URL, or path+query when the glob starts with '/') or a regex."""

    glob: str | None = None
    regex: str | None = None


@dataclass(frozen=True)
class TextCheck:
    """The page's visible text (or that of any element `selector` matches) contains a string or matches a regex."""

    contains: str | None = None
    matches: str | None = None
    selector: str | None = None
    ignore_case: bool = False


@dataclass(frozen=True)
class JsCheck:
    """A JavaScript predicate (function or expression) evaluated in the final page returns exactly `true`."""

    predicate: str


@dataclass(frozen=True)
class HttpCheck:
    """GET `url` on the app's own server: the status (default: any 2xx), then one optional comparison of the
    JSON value at `json_path` (dotted, list indexes as numbers), or of the body text for contains/matches."""

    url: str
    status: int | None = None
    json_path: str | None = None
    op: str | None = None
    value: Any = None


@dataclass(frozen=True)
class AllOf:
    checks: tuple[Check, ...]


@dataclass(frozen=True)
class AnyOf:
    checks: tuple[Check, ...]


Check = UrlCheck | TextCheck | JsCheck | HttpCheck | AllOf | AnyOf


# -- parsing -----------------------------------------------------------------------------------------------------
def _fields(data: Any, path: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise SpecError(path, f"expected an object with {', '.join(allowed)}, got {type(data).__name__}")
    for key in data:
        if key not in allowed:
            raise SpecError(f"{path}.{key}", f"unknown field (expected one of {', '.join(allowed)})")
    return data


def _text(data: dict[str, Any], key: str, path: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise SpecError(f"{path}.{key}", "must be a non-empty string")
    return value


def _regex(data: dict[str, Any], key: str, path: str) -> str | None:
    value = _text(data, key, path)
    if value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            raise SpecError(f"{path}.{key}", f"invalid regular expression: {exc}") from None
    return value


def _one_of(data: dict[str, Any], path: str, keys: tuple[str, ...], required: bool = True) -> str | None:
    given = [k for k in keys if data.get(k) is not None]
    if len(given) > 1:
        raise SpecError(f"{path}.{given[1]}", f"give only one of {', '.join(keys)}")
    if required and not given:
        raise SpecError(path, f"needs one of {', '.join(keys)}")
    return given[0] if given else None


def is_loopback_url(url: str) -> bool:
    """http(s) on 127.0.0.0/8, ::1 or `localhost`; anything else (other names, userinfo tricks) is not."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_local_url(url: str, field: str) -> None:
    """A URL on the app's own server: a path ('/api/x') or an absolute loopback URL."""
    if url.startswith("/") and not url.startswith("//"):
        return
    if not is_loopback_url(url.replace("{port}", "1")):
        raise SpecError(field, f"{url!r} is not on this machine: only paths ('/api/...') and http URLs on "
                               "127.0.0.1, ::1 or localhost are allowed")


def parse_check(data: Any, path: str = "reward") -> Check:
    """A check tree from its task-file form; raises SpecError naming the field."""
    if not isinstance(data, dict) or len(data) != 1:
        raise SpecError(path, f"a check is an object with exactly one of {', '.join(CHECK_KINDS)}")
    ((kind, body),) = data.items()
    sub = f"{path}.{kind}"
    if kind not in CHECK_KINDS:
        raise SpecError(sub, f"unknown check kind (expected one of {', '.join(CHECK_KINDS)})")
    if kind in ("all", "any"):
        if not isinstance(body, list) or not body:
            raise SpecError(sub, "must be a non-empty list of checks")
        children = tuple(parse_check(child, f"{sub}.{i}") for i, child in enumerate(body))
        return AllOf(children) if kind == "all" else AnyOf(children)
    if kind == "js":
        if not isinstance(body, str) or not body.strip():
            raise SpecError(sub, "must be a JavaScript predicate, e.g. \"() => document.title === 'Done'\"")
        return JsCheck(body)
    if kind == "url":
        body = _fields(body, sub, ("glob", "regex"))
        _one_of(body, sub, ("glob", "regex"))
        return UrlCheck(glob=_text(body, "glob", sub), regex=_regex(body, "regex", sub))
    if kind == "text":
        body = _fields(body, sub, ("contains", "matches", "selector", "ignore_case"))
        _one_of(body, sub, ("contains", "matches"))
        if not isinstance(body.get("ignore_case", False), bool):
            raise SpecError(f"{sub}.ignore_case", "must be true or false")
        return TextCheck(contains=_text(body, "contains", sub), matches=_regex(body, "matches", sub),
                         selector=_text(body, "selector", sub), ignore_case=body.get("ignore_case", False))
    body = _fields(body, sub, ("url", "status", "json_path", *HTTP_OPS))
    url = _text(body, "url", sub)
    if url is None:
        raise SpecError(f"{sub}.url", "required: the path or loopback URL to GET")
    check_local_url(url, f"{sub}.url")
    status = body.get("status")
    if status is not None and (isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599):
        raise SpecError(f"{sub}.status", "must be an HTTP status code (100-599)")
    json_path = _text(body, "json_path", sub)
    op = _one_of(body, sub, HTTP_OPS, required=False)
    if op == "matches":
        _regex(body, "matches", sub)
    if op == "exists" and (not isinstance(body["exists"], bool) or json_path is None):
        raise SpecError(f"{sub}.exists", "must be true or false, with a json_path")
    if op == "length" and (isinstance(body["length"], bool) or not isinstance(body["length"], int)
                           or body["length"] < 0):
        raise SpecError(f"{sub}.length", "must be a whole number >= 0")
    if op == "contains" and not isinstance(body["contains"], str | int | float):
        raise SpecError(f"{sub}.contains", "must be a string or a number")
    return HttpCheck(url=url, status=status, json_path=json_path, op=op, value=body.get(op) if op else None)


def is_check_spec(reward: dict[str, Any]) -> bool:
    return any(k in CHECK_KINDS for k in reward)


def parse_reward(reward: dict[str, Any]) -> Check | None:
    """The check tree of a task's `reward`, or None for the older forms (MiniWoB++, bundled-app `check`,
    expected `answer`) and an empty reward. Unknown keys fail here rather than grade 0 at run time."""
    if is_check_spec(reward):
        return parse_check(reward, "reward")
    for key in reward:
        if key not in LEGACY_KEYS:
            raise SpecError(f"reward.{key}", f"unknown reward kind (expected one of {', '.join(CHECK_KINDS)}, "
                                             "or 'answer')")
    return None


def iter_checks(check: Check, path: str = "reward") -> Iterator[tuple[str, Check]]:
    """(dotted path, check) for every node of the tree, the path as a load error would name it."""
    if isinstance(check, AllOf | AnyOf):
        yield path, check
        for i, child in enumerate(check.checks):
            yield from iter_checks(child, f"{path}.{'all' if isinstance(check, AllOf) else 'any'}.{i}")
        return
    kinds = {UrlCheck: "url", TextCheck: "text", JsCheck: "js", HttpCheck: "http"}
    yield f"{path}.{kinds[type(check)]}", check


# -- evaluation --------------------------------------------------------------------------------------------------
class PageProbe(Protocol):
    """The final page, as the checks read it."""

    def url(self) -> str: ...

    def texts(self, selector: str | None) -> list[str]: ...

    def js(self, predicate: str) -> Any: ...


class GonePage:
    """The page of an attempt whose browser is gone: its last known URL, no text, no scripts."""

    def __init__(self, last_url: str):
        self.last_url = last_url

    def url(self) -> str:
        return self.last_url

    def texts(self, selector: str | None) -> list[str]:
        raise RuntimeError("the attempt's page is gone (browser closed or crashed)")

    def js(self, predicate: str) -> Any:
        raise RuntimeError("the attempt's page is gone (browser closed or crashed)")


class PlaywrightProbe:
    """A live session's current page (the popup it switched to, if any), read on the browser thread."""

    def __init__(self, pool: Any, session: Any, timeout_s: float = 5.0):
        self.pool, self.session, self.timeout_s = pool, session, timeout_s

    def url(self) -> str:
        return str(self.session.page.url)

    def texts(self, selector: str | None) -> list[str]:
        page = self.session.page
        if selector is None:
            return [str(self.pool.run(page.evaluate("() => document.body ? document.body.innerText : ''"),
                                      self.timeout_s))]
        return list(self.pool.run(page.locator(selector).all_inner_texts(), self.timeout_s))

    def js(self, predicate: str) -> Any:
        return self.pool.run(self.session.page.evaluate(predicate), self.timeout_s)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a 3xx comes back as the status: a redirect off this machine is never followed


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def http_request(url: str, method: str = "GET", body: dict[str, Any] | None = None,
                 timeout_s: float = 10.0) -> tuple[int, bytes]:
    """(status, body) from a loopback URL, never through a proxy; any other host is refused before connecting."""
    if not is_loopback_url(url):
        raise PermissionError(f"refused: {url} is not a loopback URL (127.0.0.1, ::1, localhost)")
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with _OPENER.open(req, timeout=timeout_s) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        with contextlib.closing(exc):
            return int(exc.code), exc.read() or b""


def join_url(base: str, url: str) -> str:
    """`/path` against the app's base URL; absolute URLs unchanged."""
    return url if "://" in url else f"{base.rstrip('/')}/{url.lstrip('/')}"


def json_at(doc: Any, path: str | None) -> Any:
    for part in (path.split(".") if path else []):
        if isinstance(doc, list):
            try:
                doc = doc[int(part)]
            except (ValueError, IndexError):
                return _MISSING
        elif isinstance(doc, dict) and part in doc:
            doc = doc[part]
        else:
            return _MISSING
    return doc


def json_equal(a: Any, b: Any) -> bool:
    """JSON equality: 2 == 2.0 but true != 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    return bool(a == b)


def _clip(value: Any, n: int = 300) -> Any:
    return value[:n] + "…" if isinstance(value, str) and len(value) > n else value


def _http(check: HttpCheck, base_url: str, timeout_s: float) -> tuple[bool, dict[str, Any]]:
    url = join_url(base_url, check.url)
    out: dict[str, Any] = {"kind": "http", "url": url}
    status, body = http_request(url, timeout_s=timeout_s)
    out["status"] = status
    if not (status == check.status if check.status is not None else 200 <= status < 300):
        return False, {**out, "expected_status": check.status or "2xx"}
    if check.op is None and check.json_path is None:
        return True, out
    text = body.decode("utf-8", "replace")
    if check.json_path is None and check.op in ("contains", "matches"):
        got: Any = text
    else:
        try:
            got = json_at(json.loads(text), check.json_path)
        except json.JSONDecodeError:
            return False, {**out, "error": "the body is not JSON", "body": _clip(text)}
    out.update(json_path=check.json_path, op=check.op, expected=check.value,
               got=None if got is _MISSING else _clip(got))
    if check.op is None or check.op == "exists":
        return (got is not _MISSING) == (check.value if check.op else True), out
    if got is _MISSING:
        return False, {**out, "error": f"no value at {check.json_path}"}
    if check.op == "equals":
        return json_equal(got, check.value), out
    if check.op == "length":
        return isinstance(got, list | dict | str) and len(got) == check.value, out
    if check.op == "matches":
        return isinstance(got, str | int | float) and re.search(str(check.value), str(got)) is not None, out
    if isinstance(got, str):
        return str(check.value) in got, out
    return isinstance(got, list) and any(json_equal(x, check.value) for x in got), out


def _leaf(check: Check, probe: PageProbe, base_url: str, timeout_s: float) -> tuple[bool, dict[str, Any]]:
    if isinstance(check, UrlCheck):
        url = probe.url()
        if check.regex is not None:
            return re.search(check.regex, url) is not None, {"kind": "url", "regex": check.regex, "got": url}
        assert check.glob is not None
        parts = urlsplit(url)
        target = url if not check.glob.startswith("/") else parts.path + (f"?{parts.query}" if parts.query else "")
        return fnmatch.fnmatchcase(target, check.glob), {"kind": "url", "glob": check.glob, "got": url}
    if isinstance(check, TextCheck):
        texts = probe.texts(check.selector)
        flags = re.IGNORECASE if check.ignore_case else 0
        if check.contains is not None:
            want = " ".join(check.contains.split())
            norm = [" ".join(t.split()) for t in texts]
            ok = any((want.lower() in t.lower()) if check.ignore_case else (want in t) for t in norm)
        else:
            ok = any(re.search(check.matches or "", t, flags) for t in texts)
        return ok, {"kind": "text", "selector": check.selector, "contains": check.contains, "matches": check.matches,
                    "elements": len(texts), "got": _clip(" | ".join(texts))}
    if isinstance(check, JsCheck):
        got = probe.js(check.predicate)
        return got is True, {"kind": "js", "got": _clip(got if isinstance(got, str | int | float | bool) else
                                                        json.dumps(got, default=str))}
    assert isinstance(check, HttpCheck)
    return _http(check, base_url, timeout_s)


def evaluate_check(check: Check, probe: PageProbe, base_url: str,
                   timeout_s: float = 10.0) -> tuple[bool, dict[str, Any]]:
    """(passed, details). Every child of all/any runs (the details show each); a check that errors fails."""
    if isinstance(check, AllOf | AnyOf):
        results = [evaluate_check(child, probe, base_url, timeout_s) for child in check.checks]
        ok = all(r[0] for r in results) if isinstance(check, AllOf) else any(r[0] for r in results)
        return ok, {"kind": "all" if isinstance(check, AllOf) else "any", "ok": ok, "checks": [r[1] for r in results]}
    try:
        ok, details = _leaf(check, probe, base_url, timeout_s)
    except Exception as exc:
        ok, details = False, {"kind": type(check).__name__, "error": f"{type(exc).__name__}: {exc}"[:500]}
    return ok, {**details, "ok": ok}


def reward_evaluation(check: Check, probe: PageProbe, base_url: str, timeout_s: float = 10.0) -> Evaluation:
    """The task's verdict from its checks: reward 1 when the whole tree passes, else 0."""
    ok, details = evaluate_check(check, probe, base_url, timeout_s)
    return Evaluation(ok, float(ok), "checks", details)
