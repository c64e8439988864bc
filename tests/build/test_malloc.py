"""glibc malloc tuning of a build process: what is set, and what the user's settings keep."""

from __future__ import annotations

from typing import Any

import pytest

from las_builder.build import run as run_mod


class _FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("malloc_trim", pad, 0))
        return 1


@pytest.fixture
def libc(monkeypatch: pytest.MonkeyPatch) -> Any:
    fake = _FakeLibc()
    monkeypatch.setattr(run_mod, "_libc", fake)
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    return fake


def test_arenas_capped_and_mmap_threshold_pinned(libc: _FakeLibc) -> None:
    run_mod.tune_malloc()
    assert ("mallopt", run_mod._M_ARENA_MAX, run_mod.MALLOC_ARENAS) in libc.calls
    assert ("mallopt", run_mod._M_MMAP_THRESHOLD, run_mod.MALLOC_MMAP_THRESHOLD) in libc.calls


def test_the_users_malloc_settings_win(libc: _FakeLibc, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    run_mod.tune_malloc()
    assert libc.calls == []


def test_freed_memory_is_trimmed(libc: _FakeLibc) -> None:
    run_mod.release_freed_memory()
    assert libc.calls == [("malloc_trim", 0, 0)]


def test_without_glibc_nothing_is_called(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_mod, "_libc", False)  # looked up before: not glibc
    run_mod.tune_malloc()
    run_mod.release_freed_memory()
    assert run_mod._glibc() is None


def test_the_real_libc_accepts_the_calls() -> None:
    if run_mod._glibc() is None:
        pytest.skip("not glibc")
    run_mod.release_freed_memory()  # returns normally on glibc
    assert hasattr(run_mod._glibc(), "mallopt")
