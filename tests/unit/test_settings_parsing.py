"""Each settings object is parsed once per process, through the one reader (Env)."""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Iterator, Mapping

import pytest

from rhailambda.errors import SettingError
from rhailambda.functions.settings import FunctionSettings
from rhailambda.protocol import KeyLayout
from rhailambda.settings import Env, ProtocolSettings, SignatureSettings, WakeSettings
from rhailambda.shim.poller_modes import mode_from_env
from rhailambda.shim.settings import PollerSettings, ShimSettings, add_arguments, from_args
from rhailambda.wake import Waker


class CountingEnviron(Mapping[str, str]):
    """An environment that counts how often each variable is looked up."""

    def __init__(self, values: dict[str, str]) -> None:
        self._values = values
        self.reads: Counter[str] = Counter()

    def __getitem__(self, key: str) -> str:
        self.reads[key] += 1
        return self._values[key]

    def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
        self.reads[key] += 1
        return self._values.get(key, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def test_the_function_parses_its_signature_settings_once() -> None:
    environ = CountingEnviron({"RHAILAMBDA_SIGNATURES": "require"})
    settings = FunctionSettings.from_env(Env(environ))
    assert settings.signatures.policy == "require"
    assert settings.protocol.replay_window_s == settings.signatures.replay_window_s == 3720
    assert environ.reads["RHAILAMBDA_SIGNATURES"] == 1
    assert environ.reads["RHAILAMBDA_SIGNATURE_MAX_AGE_S"] == 1


def test_defaults_from_an_empty_environment_are_the_dataclass_defaults() -> None:
    # The protocol's replay window follows the signature settings (a bare
    # ProtocolSettings() has none: no signature is checked by its default user).
    window = ProtocolSettings(replay_window_s=SignatureSettings().replay_window_s)
    assert FunctionSettings.from_env(Env({})) == FunctionSettings(protocol=window)
    assert ProtocolSettings.from_env(Env({})).layout == KeyLayout()
    assert PollerSettings.from_env(Env({})) == PollerSettings()
    assert WakeSettings.from_env(Env({})) == WakeSettings()


def test_the_poller_mode_is_read_through_env() -> None:
    mode = mode_from_env(
        {"RHAILAMBDA_POLLER_MODE": "on-demand", "RHAILAMBDA_POLLER_IDLE_EXIT_S": " 30 "}
    )
    assert (mode.mode, mode.idle_exit_s, mode.on_demand) == ("on-demand", 30.0, True)
    with pytest.raises(SettingError, match=r"RHAILAMBDA_POLLER_IDLE_EXIT_S.*number"):
        mode_from_env({"RHAILAMBDA_POLLER_IDLE_EXIT_S": "soon"})
    with pytest.raises(SettingError, match=r"RHAILAMBDA_POLLER_IDLE_EXIT_S.*900"):
        mode_from_env({"RHAILAMBDA_POLLER_IDLE_EXIT_S": "901"})


def test_the_wake_function_is_read_through_env() -> None:
    assert Waker.from_env({"RHAILAMBDA_WAKE_FUNCTION": "  "}, KeyLayout()) is None
    waker = Waker.from_env({"RHAILAMBDA_WAKE_FUNCTION": " poller "}, KeyLayout())
    assert waker is not None and waker.function == "poller"


def test_the_poller_reads_shim_settings_from_the_environment_without_flags() -> None:
    env = Env({"RHAILAMBDA_WORKERS": "w1", "RHAILAMBDA_SHIM_ID": "p1", "RHAILAMBDA_BLOCK_S": "2"})
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert ShimSettings.from_env(env) == from_args(parser.parse_args([]), env)
    with pytest.raises(SettingError, match="RHAILAMBDA_WORKERS"):
        ShimSettings.from_env(Env({}))
