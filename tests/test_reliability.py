"""Issue 14.10 / 13: one shared secret rule (compass.secrets) for the catalog, the card and the generate errors."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

from compass.catalog import Catalog, init_catalog
from compass.secrets import is_secret_key, scrub, scrub_text

KEY = "sk-FAKEqueryKEY0123456789abcdef"


def test_secret_names_and_counts():
    for k in ["api_key", "apiKey", "OPENAI_API_KEY", "hf_token", "HF_TOKEN", "password", "client_secret",
              "Authorization", "x-api-key", "sig", "signature", "accessToken", "credentials", "auth"]:
        assert is_secret_key(k), k
    for k in ["max_tokens", "prompt_tokens", "tokenizer_texts", "tokenizer", "model", "base_url", "author",
              "keywords", "threshold", "sig_params"]:
        assert not is_secret_key(k), k


def test_urls_keep_what_is_not_secret():
    url = f"https://user:pw@h.example/v1?model=qwen&api_key={KEY}&sig=abc123&token=t0k3n"
    assert scrub_text(url, env=False) == "https://***@h.example/v1?model=qwen&api_key=***&sig=***&token=***"
    assert scrub_text(f"Authorization: Bearer {KEY}", env=False) == "Authorization: ***"
    assert scrub_text(f"key is {KEY}.", env=False) == "key is ***."
    assert scrub_text("https://h/v1?a=1", drop_query=True, env=False) == "https://h/v1?***"


def test_catalog_config_keeps_counts_and_masks_secrets(tmp_path, monkeypatch):
    """Issue 13: catalog scrub masked max_tokens and tokenizer_texts; issue 14.10: a query-string key was stored."""
    monkeypatch.setenv("SOME_SERVICE_TOKEN", "envTOKENvalue12345")
    path, _ = init_catalog(tmp_path / "s.duckdb")
    config = {"base_url": f"http://127.0.0.1:8000/v1?api_key={KEY}&model=m", "max_tokens": 256,
              "tokenizer_texts": 5000, "api_key": "plain-secret", "notes": "uses envTOKENvalue12345",
              "nested": [{"password": "pw"}, "https://u:p@h/x"]}
    with Catalog(path) as cat:
        with cat.run("x", config):
            pass
        stored = json.loads(cat.scalar("SELECT config FROM runs"))
    assert stored["max_tokens"] == 256 and stored["tokenizer_texts"] == 5000
    assert stored["base_url"] == "http://127.0.0.1:8000/v1?api_key=***&model=m"
    assert stored["api_key"] == "***" and stored["notes"] == "uses ***"
    assert stored["nested"] == [{"password": "***"}, "https://***@h/x"]
    assert scrub({"max_tokens": 1})["max_tokens"] == 1


@pytest.mark.slow  # the client retries the refused connection for about 10 s
def test_generate_failure_and_run_config_hide_a_query_string_key(catalog, products_file):
    run_cli("ingest", str(products_file), "--lang", "th", "--market", "TH", catalog=catalog)
    url = f"http://127.0.0.1:9/v1?api_key={KEY}"  # port 9 (discard): nothing listens, every request fails
    proc = run_cli("generate", "--route", "grounded", "--backend", "openai", "--base-url", url, "--model", "m",
                   "--n", "1", catalog=catalog, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert KEY not in proc.stderr + proc.stdout
    with Catalog(catalog, read_only=True) as cat:
        dump = json.dumps(cat.query("SELECT * FROM runs"), default=str)
        dump += json.dumps(cat.query("SELECT * FROM generations"), default=str)
    assert KEY not in dump and "api_key=***" in dump
