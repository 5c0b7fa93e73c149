"""Security: weights load without running code, crowd endpoints are rate-limited, worker codes are unguessable.
(Roles × URLs, CSRF and escaping of stored text on every page: tests/web/test_permission_matrix.py; uploads:
tests/test_api.py; ``check --deploy``: tests/test_settings.py; fuzzing: tests/test_fuzz.py.)"""
from __future__ import annotations

import os
import pickle
import re

import pytest
import torch
from django.core.cache import cache
from django.urls import reverse

def test_weights_are_loaded_without_running_code(tmp_path):
    """``torch.load(weights_only=True)``: a pickle that would run code on load is refused, and the code never runs."""
    from analysis.engine.networks import NetworkLoadError, load_state_dict_file

    sentinel = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.mkdir, (str(sentinel),)

    for name, write in [
        ("plain.pkl", lambda path: path.write_bytes(pickle.dumps({"weight": Exploit()}, protocol=2))),
        ("checkpoint.pt", lambda path: torch.save({"state_dict": {"weight": torch.zeros(2)}, "hook": Exploit()}, path)),
    ]:
        path = tmp_path / name
        write(path)
        with pytest.raises(NetworkLoadError, match="weights_only=True"):
            load_state_dict_file(path)
        assert not sentinel.exists(), f"{name}: loading ran code"
    good = tmp_path / "good.pt"
    torch.save({"weight": torch.ones(3)}, good)
    assert torch.equal(load_state_dict_file(good)["weight"], torch.ones(3))


def test_every_torch_load_in_the_project_uses_weights_only():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    offenders = []
    for path in [path for folder in ("accounts", "analysis", "annotation", "api", "unitscope", "benchmarks")
                 for path in (root / folder).rglob("*.py")]:
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if re.search(r"torch\.load\(", line) and "weights_only=True" not in line:
                offenders.append(f"{path.relative_to(root)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


# -- rate limits ------------------------------------------------------------------------------------------

def test_rate_parsing():
    from unitscope.ratelimit import parse_rate

    assert parse_rate("120/m") == (120, 60) and parse_rate("5/s") == (5, 1) and parse_rate("1/h") == (1, 3600)
    assert parse_rate("off") is None and parse_rate("") is None and parse_rate(None) is None
    for bad in ("120", "x/m", "0/m", "5/d", "-1/s"):
        with pytest.raises(ValueError):
            parse_rate(bad)


def test_fixed_windows_count_per_client(settings):
    from unitscope.ratelimit import rate_limit_hit

    settings.UNITSCOPE_RATE_LIMIT_ENABLED = True
    settings.UNITSCOPE_RATE_LIMITS = {"g": "3/m"}
    cache.clear()
    start = 6000.0  # the start of a window
    assert [rate_limit_hit("g", "a", now=start + i) for i in range(3)] == [None, None, None]
    assert rate_limit_hit("g", "a", now=start + 10) == 50  # wait to the end of the window
    assert rate_limit_hit("g", "b", now=start + 10) is None  # another client has its own budget
    assert rate_limit_hit("g", "a", now=start + 60) is None  # the next window
    settings.UNITSCOPE_RATE_LIMITS = {"g": "off"}
    assert all(rate_limit_hit("g", "a", now=start + 61) is None for _ in range(10))
    settings.UNITSCOPE_RATE_LIMITS = {"g": "1/m"}
    settings.UNITSCOPE_RATE_LIMIT_ENABLED = False
    assert all(rate_limit_hit("g", "c", now=start) is None for _ in range(5))


@pytest.mark.django_db
def test_crowd_pages_are_rate_limited(settings, client):
    from tests.test_crowd_study import enter, validation_study

    settings.UNITSCOPE_RATE_LIMIT_ENABLED = True
    settings.UNITSCOPE_RATE_LIMITS = {"crowd_worker": "4/m", "crowd_entry": "2/m"}
    cache.clear()
    study = validation_study(name="rl", units=2)
    first, second = enter(study, 1), enter(study, 2)
    url = reverse("annotation:crowd_next", args=[first.code])
    statuses = [client.get(url).status_code for _ in range(5)]
    assert statuses[:4] == [302] * 4 or all(status != 429 for status in statuses[:4])
    limited = client.get(url)
    assert limited.status_code == 429 and int(limited["Retry-After"]) >= 1
    assert b"Too many requests" in limited.content
    assert client.get(reverse("annotation:crowd_next", args=[second.code])).status_code != 429
    entry = reverse("annotation:crowd_entry", args=[study.token])
    assert [client.get(entry).status_code for _ in range(3)][-1] == 429
    assert client.get(entry, REMOTE_ADDR="127.0.0.9").status_code != 429  # per address


# -- unguessable names ------------------------------------------------------------------------------------

@pytest.mark.django_db
def test_worker_codes_and_tokens_come_from_secrets(monkeypatch):
    import secrets

    from annotation import common
    from tests.test_crowd_study import enter, validation_study

    study = validation_study(name="codes", units=2)
    workers = [enter(study, number) for number in range(40)]
    codes = [worker.code for worker in workers]
    assert len(set(codes)) == len(codes)
    assert all(re.fullmatch(r"[0-9a-f]{32}", code) for code in codes)  # 128 random bits
    assert all(re.fullmatch(r"[0-9a-f]{16,}", token) for token in [study.token, *study.hits.values_list("token", flat=True)])
    calls = []
    monkeypatch.setattr(common.secrets, "token_hex", lambda n: calls.append(n) or secrets.token_bytes(n).hex())
    worker = enter(study, 999)
    assert calls and sum(calls) * 8 >= 128 and len(worker.code) == 32
