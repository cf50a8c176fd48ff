"""The OpenAI-compatible back end against a real HTTP server on 127.0.0.1 with scripted completions."""
from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pas.concepts.build import ConceptsConfig, build_concepts
from pas.concepts.llm import LLMConfig, LLMError, OpenAIChat, create_chat
from pas.concepts.llm_cache import ResponseCache
from pas.core.config import ConfigError, build

SECRET = "sk-test-0123456789abcdef"
SPEC = """name: dishes
description: Prepared dishes as served, one dish per image.
default_hypernym: dish
positive_prompts: [a photo of food]
negative_prompts: [a photo of a car]
templates: ['a photo of {concept}', '{concept} {context}']
contexts: [on a plate, on a table]
"""


class LLMServer:
    """A threaded HTTP server answering /v1/chat/completions with `reply(prompt) -> (status, text, delay)`."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.reply = lambda prompt: (200, "[]", 0.0)
        self.wrap = True  # False: send the text as the whole body (a server that is not OpenAI-compatible)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server API)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                status, text, delay = server.reply(body["messages"][-1]["content"])
                time.sleep(delay)
                payload = (json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]})
                           if status == 200 and server.wrap else text).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = LLMServer()
    yield srv
    srv.close()


def sequence(*answers):
    """A reply function giving `answers` in order, then repeating the last."""
    queue = list(answers)
    return lambda prompt: queue.pop(0) if len(queue) > 1 else queue[0]


def dishes(prompt: str):
    """A scripted chef: a chatty generate answer, one expansion, then prose; judges 'car' off-domain."""
    if prompt.startswith("Domain:"):  # filter
        concept = re.search(r'Is "(.+?)" a specific', prompt).group(1)
        if concept == "car":
            return 200, "No. A car is a vehicle, not a dish.", 0.0
        if concept == "mystery":
            return 200, "Maybe, it depends on the recipe.", 0.0
        return 200, "Yes - a well-known dish.", 0.0
    if "already in the list" in prompt:  # expand
        if "- massaman curry" in prompt:
            return 200, "I'm sorry, but I can't think of any more dishes for this list.", 0.0
        return 200, "Sure! Here are more:\n1. Massaman Curry\n2. **Tom Yum Soup** - hot and sour\n3. pad thai\n" \
                    "4. Mystery\n", 0.0
    return 200, '```json\n["French Fries", "fries", "french fries", "Pad Thai", "Green Curry", "car"]\n```', 0.0


def dishes_config(server, tmp_path, bank: str = "", **top) -> ConceptsConfig:
    """The dishes spec (with an optional bank) discovered through `server`; wordllama keeps the test fast."""
    spec = tmp_path / "dishes.yaml"
    spec.write_text(SPEC + bank)
    return build(ConceptsConfig, {
        "spec": str(spec), "prompts_per_concept": 2,
        "llm": {"backend": "openai", "model": "chef-1", "base_url": server.url, "api_key_env": "PAS_TEST_LLM_KEY",
                "timeout_s": 5, "retries": 1, "backoff_s": 0.01},
        "discover": {"use_bank": bool(bank), "min_growth": 1},
        "merge": {"embedder": "wordllama", "threshold": 0.7}, **top,
    }, "concepts")


def test_discovery_generates_merges_filters_expands_and_reports(server, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PAS_TEST_LLM_KEY", SECRET)
    server.reply = dishes
    cfg = dishes_config(server, tmp_path)
    with caplog.at_level(logging.DEBUG):
        doc, report = build_concepts("dishes", cfg, seed=3, cache_dir=tmp_path / "cache")

    by_name = {c["name"]: c for c in doc["concepts"]}
    assert list(by_name) == ["french fries", "pad thai", "green curry", "massaman curry", "tom yum soup"]
    assert by_name["french fries"]["source"] == "generated" and by_name["french fries"]["step"] == "filter"
    assert by_name["massaman curry"]["source"] == "expanded" and by_name["massaman curry"]["round"] == 1
    assert by_name["french fries"]["aliases"] == ["fries"] and by_name["french fries"]["hypernym"] == "dish"
    assert all(len(c["prompts"]) == 2 for c in doc["concepts"])
    merges = {(m["merged"], m["kept"], m["reason"]) for m in report["merges"]}
    assert ("fries", "french fries", "embedding") in merges and ("french fries", "french fries", "normalised") in merges
    assert ("pad thai", "pad thai", "normalised") in merges
    rejected = {r["name"]: r["reason"] for r in report["rejected"]}
    assert rejected["car"] == "llm said no: A car is a vehicle, not a dish."
    assert rejected["mystery"].startswith("unclear judgement: Maybe")
    assert [(u["step"], u["round"]) for u in report["unparsed"]] == [("filter", 1), ("expand", 2)]
    assert "can't think" in report["unparsed"][1]["raw"] and len(report["unparsed"][1]["cache_key"]) == 64
    assert report["stop_reason"].startswith("growth stalled")
    assert report["steps"]["generate"] == {"requests": 1, "unparsed": 0, "proposed": 6, "merged": 2, "rejected": 1,
                                           "kept": 3}
    assert report["steps"]["expand"]["kept_per_round"] == [2, 0]
    assert report["steps"]["filter"] == {"asked": 7, "yes": 5, "no": 1, "unclear": 1}

    sent = server.requests
    assert len(sent) == report["llm"]["requests"] == 1 + 7 + 2
    assert {r["auth"] for r in sent} == {f"Bearer {SECRET}"} and {r["path"] for r in sent} == {"/v1/chat/completions"}
    assert {r["body"]["seed"] for r in sent} == {3} and {r["body"]["model"] for r in sent} == {"chef-1"}
    judged = [r["body"] for r in sent if r["body"]["messages"][0]["content"].startswith("Domain:")]
    assert len(judged) == 7 and {body["temperature"] for body in judged} == {0.0}
    stored = " ".join(p.read_text() for p in (tmp_path / "cache").rglob("*.json"))
    assert len(ResponseCache(tmp_path / "cache")) == 10
    for text in (stored, json.dumps(report), json.dumps(doc), caplog.text):
        assert SECRET not in text

    # A rerun (here without the key: a teammate after `dvc pull`) answers everything from the cache.
    monkeypatch.delenv("PAS_TEST_LLM_KEY")
    again, report2 = build_concepts("dishes", cfg, seed=3, cache_dir=tmp_path / "cache")
    assert again == doc and len(server.requests) == 10
    assert report2["llm"]["requests"] == 0 and report2["llm"]["cache_hits"] == 10
    # Only prompts_per_concept changed: the same answers, more prompts.
    more, _ = build_concepts("dishes", replace(cfg, prompts_per_concept=3), seed=3, cache_dir=tmp_path / "cache")
    assert [c["name"] for c in more["concepts"]] == list(by_name) and len(server.requests) == 10
    assert all(len(c["prompts"]) == 3 for c in more["concepts"])
    # A different seed is a different request.
    with pytest.raises(ConfigError, match="PAS_TEST_LLM_KEY"):
        build_concepts("dishes", cfg, seed=4, cache_dir=tmp_path / "cache")


def test_count_stops_expansion_and_bank_comes_first(server, tmp_path, monkeypatch):
    monkeypatch.setenv("PAS_TEST_LLM_KEY", SECRET)
    server.reply = dishes
    cfg = dishes_config(server, tmp_path, bank="concepts: [hamburger, French fries]\n", count=4)
    doc, report = build_concepts("dishes", cfg, seed=0, cache_dir=None)
    assert [c["name"] for c in doc["concepts"]] == ["hamburger", "french fries", "pad thai", "green curry"]
    assert [c["source"] for c in doc["concepts"]] == ["shipped", "shipped", "generated", "generated"]
    assert report["stop_reason"] == "count reached" and report["steps"]["expand"]["requests"] == 0


def chat(server, tmp_path, **llm):
    cfg = build(LLMConfig, {"backend": "openai", "model": "m", "base_url": server.url, "timeout_s": 2.0,
                            "retries": 2, "backoff_s": 0.01, **llm}, "concepts.llm")
    return create_chat(cfg, tmp_path / "cache", seed=0)


def test_retries_a_500_and_a_timeout_then_caches(server, tmp_path):
    server.reply = sequence((500, "overloaded", 0.0), (200, "late", 8.0), (200, '["pho"]', 0.0))
    llm = chat(server, tmp_path)          # a 2 s timeout: 4x below the late reply, far above a loaded CI's latency
    started = time.monotonic()
    assert llm.ask("list dishes").text == '["pho"]'
    assert len(server.requests) == 3 and time.monotonic() - started < 7.5   # it gave up on the late one
    assert llm.ask("list dishes").cached and len(server.requests) == 3


def test_gives_up_after_the_retries_and_caches_nothing(server, tmp_path):
    server.reply = lambda prompt: (503, "down", 0.0)
    with pytest.raises(LLMError, match="3 attempts: HTTP 503"):
        chat(server, tmp_path).ask("list dishes")
    assert len(server.requests) == 3 and len(ResponseCache(tmp_path / "cache")) == 0


def test_client_errors_are_not_retried_and_never_show_the_key(server, tmp_path, monkeypatch):
    monkeypatch.setenv("PAS_TEST_LLM_KEY", SECRET)
    server.reply = lambda prompt: (401, '{"error": "invalid api key"}', 0.0)
    with pytest.raises(LLMError, match="HTTP 401") as err:
        chat(server, tmp_path, api_key_env="PAS_TEST_LLM_KEY").ask("list dishes")
    assert len(server.requests) == 1 and SECRET not in str(err.value)


def test_a_reply_that_is_not_a_chat_completion_is_an_error(server, tmp_path):
    server.wrap = False
    server.reply = lambda prompt: (200, "<html>proxy login</html>", 0.0)
    with pytest.raises(LLMError, match="not a chat completion: <html>proxy login"):
        chat(server, tmp_path).ask("list dishes")
    assert len(server.requests) == 1


def test_connection_refused_is_retried_then_reported(tmp_path):
    cfg = build(LLMConfig, {"backend": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1",
                            "retries": 1, "backoff_s": 0.01}, "concepts.llm")
    with pytest.raises(LLMError, match="2 attempts: connection failed"):
        OpenAIChat(cfg).complete("hi", 0.0, 0)


def test_config_errors_name_the_key_and_never_echo_a_pasted_key():
    with pytest.raises(ConfigError, match="concepts.llm.backend='gpt'.*none, openai, transformers"):
        build(LLMConfig, {"backend": "gpt"}, "concepts.llm")
    with pytest.raises(ConfigError, match="concepts.llm.base_url"):
        build(LLMConfig, {"backend": "openai", "model": "m"}, "concepts.llm")
    with pytest.raises(ConfigError, match="concepts.llm.api_key_env must name") as err:
        build(LLMConfig, {"api_key_env": SECRET + "-x"}, "concepts.llm")
    assert SECRET not in str(err.value)
    with pytest.raises(ConfigError, match="concepts.captions"):
        build(ConceptsConfig, {"captions": 2}, "concepts")
    assert build(ConceptsConfig, {"llm": "none"}, "concepts").llm == LLMConfig()


def test_llm_captions_lead_the_prompts(server, tmp_path, monkeypatch):
    spec = tmp_path / "dishes.yaml"
    spec.write_text(SPEC + "concepts: [pho]\n")
    server.reply = lambda prompt: (200, "Captions:\n1. A bowl of pho on a street stall.\n2. Pho from above.\n", 0.0)
    cfg = build(ConceptsConfig, {"spec": str(spec), "prompts_per_concept": 3, "captions": 2,
                                 "llm": {"backend": "openai", "model": "m", "base_url": server.url},
                                 "discover": {"use_bank": True}, "count": 1}, "concepts")
    doc, report = build_concepts("dishes", cfg, seed=0, cache_dir=tmp_path / "cache")
    prompts = doc["concepts"][0]["prompts"]
    assert prompts[:2] == ["A bowl of pho on a street stall.", "Pho from above."] and len(prompts) == 3
    assert len(server.requests) == 1 and report["captions"] == {"per_concept": 2, "unusable": 0}


@pytest.fixture(scope="module")
def tiny_causal_lm(tmp_path_factory):
    """A 1-layer GPT-2 with a word-level tokenizer and a chat template, saved like a real model folder."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "<eos>"] + "yes no pad thai green curry pho ramen dish food is a of the".split()
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", eos_token="<eos>")
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(words), n_positions=256, n_embd=16, n_layer=1, n_head=2,
                                       bos_token_id=2, eos_token_id=2, pad_token_id=0))
    folder = tmp_path_factory.mktemp("tiny-lm")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_transformers_backend_generates_from_a_local_folder_and_caches(tiny_causal_lm, tmp_path):
    cfg = build(LLMConfig, {"backend": "transformers", "model": str(tiny_causal_lm), "max_tokens": 6},
                "concepts.llm")
    first = create_chat(cfg, tmp_path / "cache", seed=1)
    reply = first.ask("is pho a dish")
    assert isinstance(reply.text, str) and reply.text.strip() and not reply.cached
    assert first.ask("is pho a dish").cached and first.requests == 1
    fresh = create_chat(cfg, None, seed=1)  # no cache: generation itself is deterministic for a seed
    assert fresh.ask("is pho a dish").text == reply.text
    assert fresh.ask("is pho a dish", temperature=0.0).text == fresh.ask("is pho a dish", temperature=0.0).text


def test_transformers_backend_needs_a_local_folder(tmp_path):
    cfg = build(LLMConfig, {"backend": "transformers", "model": str(tmp_path / "missing")}, "concepts.llm")
    with pytest.raises(ConfigError, match="concepts.llm.model=.*not a local folder"):
        create_chat(cfg, None, seed=0).ask("hi")
