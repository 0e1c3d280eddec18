"""The one rule for what is a secret, used everywhere compass stores or prints something (issues 13, 14).

- A *key name* is secret when one of its words is a credential word (key, token, secret, password, auth,
  signature, sig, credential, cookie...) or ends in one (apikey, accesstoken). Token *counts* and tokenizers are
  not secrets: `max_tokens`, `prompt_tokens`, `tokenizer_texts` keep their values.
- In a string: URL userinfo (`https://user:pass@host`), URL query parameters and `name=value` pairs whose name is
  secret (`?api_key=sk-...`, `&sig=...`), `Bearer ...`, well-known key shapes (`sk-...`, `hf_...`, `ghp_...`),
  and the values of secret-named environment variables (HF_TOKEN, OPENAI_API_KEY...) are masked as `***`.

Used by: catalog.db.scrub (run configs and summaries), the dataset card (publish_card), server messages and the
generate failure line (datagen). Hand-written because the rule is ours: no library knows which of our config
keys are counts and which are credentials.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

MASK = "***"
# Credential words, matched against the words of a key name (snake_case, kebab-case, camelCase, dotted).
SECRET_WORDS = {"key", "apikey", "token", "secret", "password", "passwd", "pwd", "auth", "authorization",
                "signature", "credential", "credentials", "cookie", "bearer", "session", "privatekey"}
# Secret only as the whole name: `sig` (a URL signature, Azure SAS) is also short for the MinHash signature
# parameters of dedup (`sig_params`).
SECRET_NAMES = {"sig", "x-amz-signature", "x-goog-signature"}
SECRET_SUFFIXES = ("key", "token", "secret", "password", "passwd", "credential", "credentials", "signature")
# Words that contain a credential word but name something else: counts of tokens, tokenizers, keyword lists.
NOT_SECRET_WORDS = {"tokens", "tokenizer", "tokenizers", "tokenize", "keys", "keywords", "keyword", "monkey"}

_WORDS = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
_USERINFO = re.compile(r"(?P<scheme>\b[a-z][a-z0-9+.-]*://)[^/@\s?#]+@", re.I)
# name=value inside a URL query or free text (`?api_key=...`, `token: ...` is left to the key-name rule).
_PAIR = re.compile(r"(?P<name>[A-Za-z0-9_.\-]+)=(?P<value>[^&\s#\"',;)]+)")
_SHAPES = re.compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9_\-]{16,}|\bhf_[A-Za-z0-9]{16,}|\bgh[pousr]_[A-Za-z0-9]{16,}|"
                     r"\bxox[abprs]-[A-Za-z0-9\-]{10,}|\bBearer\s+[A-Za-z0-9._~+/=\-]+", re.I)
_QUERY = re.compile(r"(?P<url>\b[a-z][a-z0-9+.-]*://[^\s?#\"']+)\?[^\s#\"']*", re.I)
_ENV_MIN = 8  # shorter environment values would mask ordinary words


def is_secret_key(key: object) -> bool:
    if str(key).lower() in SECRET_NAMES:
        return True
    words = [w.lower() for w in _WORDS.findall(str(key))]
    for w in words:
        if w in NOT_SECRET_WORDS:
            continue
        if w in SECRET_WORDS or w.endswith(SECRET_SUFFIXES):
            return True
    return False


def env_secret_values() -> list[str]:
    """Values of secret-named environment variables, longest first (so a longer one is masked whole)."""
    vals = {v for k, v in os.environ.items() if is_secret_key(k) and v and len(v) >= _ENV_MIN}
    return sorted(vals, key=len, reverse=True)


def scrub_text(text: str, drop_query: bool = False, env: bool = True) -> str:
    """Mask every secret in a free string (a URL, a server message, a config value).

    drop_query: remove URL query strings entirely (for public artefacts such as the dataset card)."""
    s = _USERINFO.sub(rf"\g<scheme>{MASK}@", text)
    if drop_query:
        s = _QUERY.sub(rf"\g<url>?{MASK}", s)
    s = _PAIR.sub(lambda m: f"{m['name']}={MASK}" if is_secret_key(m["name"]) else m.group(), s)
    s = _SHAPES.sub(MASK, s)
    if env:
        for val in env_secret_values():
            s = s.replace(val, MASK)
    return s


def scrub(obj: Any, drop_query: bool = False) -> Any:
    """A config (dicts, lists, strings, paths) fit to store and print: secret-named keys keep their name but not
    their value, every string passes scrub_text."""
    env = env_secret_values()

    def walk(o: Any) -> Any:
        if isinstance(o, dict):
            return {k: (MASK if is_secret_key(k) and v else walk(v)) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [walk(v) for v in o]
        if isinstance(o, Path):
            o = str(o)
        if isinstance(o, str):
            s = scrub_text(o, drop_query=drop_query, env=False)
            for val in env:
                s = s.replace(val, MASK)
            return s
        return o

    return walk(obj)
