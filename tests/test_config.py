import base64
import dataclasses
import json
import re
import tomllib
from pathlib import Path

import pytest

from tether import config
from tether.config import ConfigError, Match, load_config, loader, parse_config, parse_duration

EXAMPLE = Path(__file__).parent.parent / "config" / "tether.toml"
SECRET = "sk-test-0123456789abcdef"


def parse(text: str, environ: dict[str, str] | None = None) -> config.Config:
    return parse_config(tomllib.loads(text), environ=environ or {})


def error_of(text: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(text, environ)
    return str(caught.value)


# --- durations -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("0.5s", 0.5),
        ("90s", 90.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("2d", 172800.0),
        ("250ms", 0.25),
        ("1d2h3m4s5ms", 93784.005),
        ("0s", 0.0),
        (90, 90.0),
        (0.5, 0.5),
        (0, 0.0),
    ],
)
def test_a_duration_is_read_as_seconds(value, seconds):
    assert parse_duration(value, "x") == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("5 minutes", 'invalid duration "5 minutes"'),
        ("", 'invalid duration ""'),
        ("-5s", 'invalid duration "-5s"'),
        ("90", 'invalid duration "90"'),
        ("1m1h", 'invalid duration "1m1h"'),
        ("5x", 'invalid duration "5x"'),
        ("s", 'invalid duration "s"'),
        (True, "expected a duration, got true"),
        ([5], "expected a duration, got an array"),
        (-1, "expected a duration >= 0, got -1"),
        (float("inf"), "expected a duration >= 0, got Infinity"),
        (float("nan"), "expected a duration >= 0, got NaN"),
    ],
)
def test_an_invalid_duration_is_rejected_naming_its_key(value, message):
    with pytest.raises(ConfigError) as caught:
        parse_duration(value, "policy[1].max_runtime")
    assert str(caught.value).startswith(f"policy[1].max_runtime: {message}")


# --- matching ------------------------------------------------------------------------------------

RESPONSE = {
    "model": "o3-deep-research-2025-06-26",
    "metadata": {"team": "search"},
    "account": "default",
    "labels": {"job": "42"},
}


@pytest.mark.parametrize(
    ("match", "changes", "fits"),
    [
        pytest.param(Match(), {}, True, id="an empty match fits anything"),
        pytest.param(
            Match(), {"model": None, "metadata": None, "labels": None}, True, id="an empty match fits a bare response"
        ),
        pytest.param(Match(model=("o3-deep-research*",)), {}, True, id="a model glob fits"),
        pytest.param(Match(model=("gpt-5*", "o3-*")), {}, True, id="any glob of a list fits"),
        pytest.param(Match(model=("o3-pro*",)), {}, False, id="a different model does not fit"),
        pytest.param(Match(model=("O3-*",)), {}, False, id="globs are case sensitive"),
        pytest.param(Match(model=("*",)), {"model": None}, False, id="an unknown model never fits a model selector"),
        pytest.param(Match(metadata={"team": "search"}), {}, True, id="equal metadata fits"),
        pytest.param(Match(metadata={"team": "ads"}), {}, False, id="different metadata does not fit"),
        pytest.param(
            Match(metadata={"team": "search", "tier": "1"}), {}, False, id="every metadata key must be present"
        ),
        pytest.param(Match(metadata={"team": "search"}), {"metadata": None}, False, id="missing metadata does not fit"),
        pytest.param(Match(account=("default", "batch")), {}, True, id="a listed account fits"),
        pytest.param(Match(account=("batch",)), {}, False, id="another account does not fit"),
        pytest.param(Match(labels={"job": "42"}), {}, True, id="equal labels fit"),
        pytest.param(Match(labels={"job": "43"}), {}, False, id="different labels do not fit"),
        pytest.param(Match(labels={"job": "42"}), {"labels": None}, False, id="missing labels do not fit"),
        pytest.param(
            Match(model=("o3-*",), metadata={"team": "search"}, account=("default",), labels={"job": "42"}),
            {},
            True,
            id="all selectors fitting fits",
        ),
        pytest.param(
            Match(model=("o3-*",), metadata={"team": "search"}, account=("batch",)),
            {},
            False,
            id="one selector failing fails the match",
        ),
    ],
)
def test_a_match_fits_when_every_given_selector_fits(match, changes, fits):
    assert match.fits(**{**RESPONSE, **changes}) is fits


# --- parsing valid files --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "base_url"),
    [
        ({}, "https://api.openai.com/v1"),
        ({"OPENAI_BASE_URL": "http://localhost:8000/v1/"}, "http://localhost:8000/v1"),
        ({"OPENAI_BASE_URL": ""}, "https://api.openai.com/v1"),
    ],
)
def test_without_accounts_there_is_one_default_account_from_the_environment(environ, base_url):
    cfg = parse("", environ)
    assert list(cfg.accounts) == ["default"]
    assert cfg.accounts["default"].base_url == base_url
    assert cfg.accounts["default"].api_key_env == "OPENAI_API_KEY"
    assert cfg.policies == ()


def test_without_settings_every_default_applies():
    cfg = parse("", {"STATE_DIRECTORY": "/var/lib/tether"})
    assert cfg.store.url == "sqlite:////var/lib/tether/tether.db"
    assert cfg.log == config.LogConfig(format="auto", level="info")
    assert cfg.polling == config.PollingConfig(
        first=1.0, max_interval=60.0, backoff=1.5, jitter=0.1, confirm_window=60.0, lost_after=3
    )
    account = cfg.accounts["default"]
    assert (account.max_concurrency, account.deadline_concurrency) == (16, 256)
    assert (account.request_timeout, account.max_reply_bytes) == (30.0, 8388608)


def test_every_setting_of_a_full_file_is_read():
    cfg = parse(
        """
        [store]
        url = "postgresql+psycopg://tether@db/tether"
        [log]
        format = "json"
        level = "debug"
        [accounts.main]
        base_url = "https://example.test/openai/v1/"
        api_key_file = "/etc/tether/openai.key"
        organization = "org_1"
        project = "proj_1"
        max_concurrency = 4
        deadline_concurrency = 32
        request_timeout = "1m"
        max_reply_bytes = 1048576
        [polling]
        first = "2s"
        max_interval = "5m"
        backoff = 2
        jitter = 0
        confirm_window = "90s"
        lost_after = 5
        [[policy]]
        name = "p"
        match = { model = "gpt-5*", metadata = { team = "a" }, account = "main", labels = { job = "1" } }
        max_queued = 600
        max_runtime = "1h"
        action = "warn"
        reserve_usd = 1
        """
    )
    assert cfg.store.url == "postgresql+psycopg://tether@db/tether"
    assert cfg.log == config.LogConfig(format="json", level="debug")
    assert cfg.accounts["main"] == config.AccountConfig(
        name="main",
        base_url="https://example.test/openai/v1",
        api_key_file="/etc/tether/openai.key",
        organization="org_1",
        project="proj_1",
        max_concurrency=4,
        deadline_concurrency=32,
        request_timeout=60.0,
        max_reply_bytes=1048576,
    )
    assert cfg.polling == config.PollingConfig(
        first=2.0, max_interval=300.0, backoff=2.0, jitter=0.0, confirm_window=90.0, lost_after=5
    )
    assert cfg.policies == (
        config.PolicyConfig(
            name="p",
            match=Match(model=("gpt-5*",), metadata={"team": "a"}, account=("main",), labels={"job": "1"}),
            max_queued=600.0,
            max_runtime=3600.0,
            action="warn",
            reserve_usd=1.0,
        ),
    )


def test_a_policy_without_limits_is_accepted():
    policy = parse('[[policy]]\nname = "track-only"').policies[0]
    assert (policy.max_queued, policy.max_runtime, policy.action, policy.match) == (None, None, "cancel", Match())


@pytest.mark.parametrize(
    ("accounts", "default"),
    [
        (["batch", "default"], "default"),
        (["batch", "interactive"], "batch"),
        (["interactive", "batch"], "interactive"),
    ],
)
def test_the_default_account_is_the_one_called_default_else_the_first(accounts, default):
    cfg = parse("".join(f"[accounts.{name}]\n" for name in accounts))
    assert list(cfg.accounts) == accounts
    assert cfg.default_account == default


def test_a_loaded_config_cannot_be_changed():
    cfg = parse('[[policy]]\nname = "p"\nmatch = { metadata = { team = "a" } }')
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.policies[0].max_runtime = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.accounts["other"] = cfg.accounts["default"]  # type: ignore[index]
    with pytest.raises(TypeError):
        cfg.policies[0].match.metadata["team"] = "b"  # type: ignore[index]


def test_the_example_config_is_accepted_and_acts_on_nothing():
    """Copied as it is (the deploy steps do), the example must change nothing about anyone's responses."""
    cfg = load_config(str(EXAMPLE), environ={})
    assert cfg.path == EXAMPLE
    assert cfg.accounts["default"].key_source() == "env OPENAI_API_KEY"
    assert (cfg.policies, cfg.budgets, cfg.prices, cfg.service_tiers) == ((), (), {}, {})


def turned_on(example: str) -> str:
    """The example with its commented-out settings on: a bare `#` before a table or a key is removed."""
    return re.sub(r"(?m)^#(?=\[|[a-z_]+ = )", "", example)


def test_the_example_settings_are_valid_once_turned_on():
    cfg = parse(turned_on(EXAMPLE.read_text()))
    assert [policy.name for policy in cfg.policies] == ["deep-research", "warn-only", "everything-else"]
    deep, warn, rest = cfg.policies
    assert deep.match == Match(model=("o3-deep-research*", "o4-mini-deep-research*"), metadata={"team": "search"})
    assert (deep.max_queued, deep.max_runtime, deep.action, deep.reserve_usd) == (600.0, 2700.0, "cancel", 2.0)
    assert warn.action == "warn"
    assert (rest.match, rest.max_runtime, rest.action) == (Match(), 7200.0, "cancel")
    assert [budget.name for budget in cfg.budgets] == ["search-daily", "all-rolling-24h"]
    daily, rolling = cfg.budgets
    assert daily == config.BudgetConfig(
        name="search-daily",
        match=Match(metadata={"team": "search"}),
        limit_usd=50.0,
        period="day",
        timezone="Europe/Berlin",
        warn_at=(0.5, 0.8),
        on_exceed="cancel",
    )
    assert (rolling.match, rolling.period, rolling.window, rolling.on_exceed) == (Match(), None, 86400.0, "warn")
    assert cfg.prices == {"o3-pro": config.Price(20.0, 20.0, 80.0), "my-finetune": config.Price(3.0, 1.5, 12.0)}
    assert cfg.service_tiers == {"priority": 1.8}
    assert cfg.output_tokens_per_second == 50.0


# --- prices, tiers, estimates and budgets ----------------------------------------------------------


def test_without_prices_or_budgets_the_defaults_apply():
    cfg = parse("")
    assert (cfg.prices, cfg.service_tiers, cfg.output_tokens_per_second, cfg.budgets) == ({}, {}, 50.0, ())


def test_prices_tiers_and_the_estimate_speed_are_read():
    cfg = parse(
        """
        [prices."o3-pro"]
        input = 20
        cached_input = 10.5
        output = 80
        [prices."gpt-5.2"]
        input = 1.75
        output = 14
        [prices."meta-llama/Llama-3.1-8B"]
        input = 0
        output = 0
        [service_tiers]
        flex = 0.4
        turbo = 3
        [estimate]
        output_tokens_per_second = 120
        """
    )
    assert cfg.prices == {
        "o3-pro": config.Price(input=20.0, cached_input=10.5, output=80.0),
        "gpt-5.2": config.Price(input=1.75, cached_input=1.75, output=14.0),
        "meta-llama/Llama-3.1-8B": config.Price(input=0.0, cached_input=0.0, output=0.0),
    }
    assert cfg.service_tiers == {"flex": 0.4, "turbo": 3.0}
    assert cfg.output_tokens_per_second == 120.0


def test_every_setting_of_a_budget_is_read():
    cfg = parse(
        """
        [accounts.batch]
        [[budget]]
        name = "search-daily"
        match = { model = "o3*", metadata = { team = "search" }, account = "batch", labels = { job = "1" } }
        limit_usd = 50
        period = "day"
        timezone = "America/New_York"
        warn_at = [0.8, 0.5, 1, 0.8]
        on_exceed = "warn"
        """
    )
    assert cfg.budgets == (
        config.BudgetConfig(
            name="search-daily",
            match=Match(model=("o3*",), metadata={"team": "search"}, account=("batch",), labels={"job": "1"}),
            limit_usd=50.0,
            period="day",
            window=None,
            timezone="America/New_York",
            warn_at=(0.5, 0.8, 1.0),
            on_exceed="warn",
        ),
    )


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        pytest.param(
            'period = "month"',
            {
                "match": Match(),
                "period": "month",
                "window": None,
                "timezone": "UTC",
                "warn_at": (),
                "on_exceed": "cancel",
            },
            id="a minimal calendar budget matches everything in UTC and cancels",
        ),
        pytest.param('window = "24h"', {"period": None, "window": 86400.0}, id="a rolling window in a duration"),
        pytest.param("window = 90", {"period": None, "window": 90.0}, id="a rolling window in seconds"),
        pytest.param('period = "hour"\nwarn_at = []', {"warn_at": ()}, id="no thresholds"),
        pytest.param('period = "week"\ntimezone = "Asia/Kolkata"', {"timezone": "Asia/Kolkata"}, id="a time zone"),
    ],
)
def test_a_budget_takes_defaults_for_what_it_omits(settings, expected):
    budget = parse(f'[[budget]]\nname = "b"\nlimit_usd = 1\n{settings}').budgets[0]
    assert {key: getattr(budget, key) for key in expected} == expected


@pytest.mark.parametrize(("name", "found"), [("daily", "daily"), ("weekly", "weekly"), ("gone", None)])
def test_a_budget_is_found_by_name(name, found):
    cfg = parse(
        '[[budget]]\nname = "daily"\nlimit_usd = 1\nperiod = "day"\n'
        '[[budget]]\nname = "weekly"\nlimit_usd = 5\nperiod = "week"'
    )
    budget = cfg.budget_named(name)
    assert (budget.name if budget else None) == found


BUDGET = '[[budget]]\nname = "a"\nlimit_usd = 1\nperiod = "day"\n'


def test_budgets_and_prices_cannot_be_changed():
    cfg = parse("[prices.m]\ninput = 1\noutput = 2\n[service_tiers]\nflex = 0.5\n" + BUDGET)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.budgets[0].limit_usd = 2.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.prices["other"] = cfg.prices["m"]  # type: ignore[index]
    with pytest.raises(TypeError):
        cfg.service_tiers["flex"] = 1.0  # type: ignore[index]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # prices
        pytest.param(
            '[prices."o3-pro"]\ninput = 20\noutput = -1',
            "prices.o3-pro.output: expected a number >= 0, got -1",
            id="a negative price",
        ),
        pytest.param(
            '[prices."gpt-5.2"]\ninput = "1.75"\noutput = 14',
            'prices."gpt-5.2".input: expected a number >= 0, got "1.75"',
            id="a price given as a string, under a quoted model key",
        ),
        pytest.param(
            '[prices."o3-pro"]\ninput = 20\ncached_input = nan\noutput = 80',
            "prices.o3-pro.cached_input: expected a number >= 0, got NaN",
            id="a price that is not a number",
        ),
        pytest.param(
            '[prices."o3-pro"]\noutput = 80',
            "prices.o3-pro.input: missing; every price needs input and output (cached_input is optional)",
            id="a price without input",
        ),
        pytest.param(
            '[prices."o3-pro"]\ninput = 20',
            "prices.o3-pro.output: missing; every price needs input and output (cached_input is optional)",
            id="a price without output",
        ),
        pytest.param(
            '[prices."o3-pro"]\ninput = 20\noutput = 80\ncached = 5',
            "prices.o3-pro.cached: unknown key (known: input, cached_input, output)",
            id="an unknown price key",
        ),
        pytest.param("prices = { o3 = 5 }", "prices.o3: expected a table, got 5", id="a price that is not a table"),
        pytest.param('prices = "cheap"', 'prices: expected a table, got "cheap"', id="prices that are not a table"),
        # service tiers and estimates
        pytest.param(
            "[service_tiers]\nflex = -0.5", "service_tiers.flex: expected a number >= 0, got -0.5", id="a negative tier"
        ),
        pytest.param(
            '[service_tiers]\nflex = "half"',
            'service_tiers.flex: expected a number >= 0, got "half"',
            id="a tier given as a word",
        ),
        pytest.param(
            "[estimate]\noutput_tokens_per_second = 0",
            "estimate.output_tokens_per_second: expected a number > 0, got 0",
            id="an estimate speed of zero",
        ),
        pytest.param(
            "[estimate]\ntokens_per_second = 10",
            "estimate.tokens_per_second: unknown key (known: output_tokens_per_second)",
            id="an unknown estimate key",
        ),
        # budgets
        pytest.param(
            '[budget]\nname = "b"',
            "budget: expected an array of tables ([[budget]]), got a table",
            id="a single budget table",
        ),
        pytest.param(
            '[[budget]]\nlimit_usd = 1\nperiod = "day"',
            "budget[1].name: missing; every [[budget]] needs a name and a limit_usd",
            id="a budget without a name",
        ),
        pytest.param(
            '[[budget]]\nname = "b"\nperiod = "day"',
            "budget[1].limit_usd: missing; every [[budget]] needs a name and a limit_usd",
            id="a budget without a limit",
        ),
        pytest.param(
            '[[budget]]\nname = "b"\nlimit_usd = 0\nperiod = "day"',
            "budget[1].limit_usd: expected a number > 0, got 0",
            id="a limit of zero",
        ),
        pytest.param(
            '[[budget]]\nname = "b"\nlimit_usd = "50"\nperiod = "day"',
            'budget[1].limit_usd: expected a number > 0, got "50"',
            id="a limit given as a string",
        ),
        pytest.param(
            BUDGET + '[[budget]]\nname = "a"\nlimit_usd = 1\nperiod = "day"',
            'budget[2].name: duplicate budget name "a"',
            id="a duplicate budget name",
        ),
        pytest.param(
            '[[budget]]\nname = "search daily"\nlimit_usd = 1\nperiod = "day"',
            'budget[1].name: invalid name "search daily" (use letters, digits, _, - and .)',
            id="a budget name with a space",
        ),
        pytest.param(
            '[[budget]]\nname = "b"\nlimit_usd = 1\nperiod = "day"\nwindow = "24h"',
            "budget[1]: give either period or window, not both",
            id="both a period and a window",
        ),
        pytest.param(
            '[[budget]]\nname = "b"\nlimit_usd = 1',
            'budget[1]: needs a period (hour, day, week, month) or a rolling window (such as "24h")',
            id="neither a period nor a window",
        ),
        pytest.param(
            '[[budget]]\nname = "b"\nlimit_usd = 1\nperiod = "daily"',
            'budget[1].period: expected one of hour, day, week, month, got "daily"',
            id="an unknown period",
        ),
        pytest.param(
            '[[budget]]\nname = "b"\nlimit_usd = 1\nwindow = "0s"',
            'budget[1].window: expected a duration > 0, got "0s"',
            id="an empty rolling window",
        ),
        pytest.param(
            '[[budget]]\nname = "b"\nlimit_usd = 1\nwindow = "1 day"',
            'budget[1].window: invalid duration "1 day" '
            '(write e.g. "90s", "5m", "1h30m", "2d", or a number of seconds)',
            id="a rolling window in words",
        ),
        pytest.param(
            BUDGET + '[[budget]]\nname = "b"\nlimit_usd = 1\nperiod = "day"\ntimezone = "Mars/Olympus"',
            'budget[2].timezone: unknown timezone "Mars/Olympus" (expected an IANA name such as UTC or Europe/Berlin)',
            id="an unknown time zone",
        ),
        pytest.param(
            '[[budget]]\nname = "b"\nlimit_usd = 1\nperiod = "day"\ntimezone = "../../etc/passwd"',
            'budget[1].timezone: unknown timezone "../../etc/passwd" '
            "(expected an IANA name such as UTC or Europe/Berlin)",
            id="a time zone that is a path",
        ),
        pytest.param(
            '[[budget]]\nname = "b"\nlimit_usd = 1\nperiod = "day"\ntimezone = "+02:00"',
            'budget[1].timezone: unknown timezone "+02:00" (expected an IANA name such as UTC or Europe/Berlin)',
            id="a time zone that is an offset",
        ),
        pytest.param(
            '[[budget]]\nname = "b"\nlimit_usd = 1\nperiod = "day"\ntimezone = ""',
            'budget[1].timezone: expected a non-empty string, got ""',
            id="an empty time zone",
        ),
        pytest.param(
            '[[budget]]\nname = "b"\nlimit_usd = 1\nperiod = "day"\nwarn_at = [0.5, 80]',
            "budget[1].warn_at[2]: expected a fraction of the limit in (0, 1], got 80",
            id="a threshold given as a percentage",
        ),
        pytest.param(
            '[[budget]]\nname = "b"\nlimit_usd = 1\nperiod = "day"\nwarn_at = [0]',
            "budget[1].warn_at[1]: expected a fraction of the limit in (0, 1], got 0",
            id="a threshold of zero",
        ),
        pytest.param(
            '[[budget]]\nname = "b"\nlimit_usd = 1\nperiod = "day"\nwarn_at = 0.5',
            "budget[1].warn_at: expected an array of fractions of the limit in (0, 1], got 0.5",
            id="a threshold that is not an array",
        ),
        pytest.param(
            '[[budget]]\nname = "b"\nlimit_usd = 1\nperiod = "day"\non_exceed = "kill"',
            'budget[1].on_exceed: expected one of cancel, warn, got "kill"',
            id="an unknown action on exceeding",
        ),
        pytest.param(
            '[[budget]]\nname = "b"\nlimit_usd = 1\nperiod = "day"\nmatch = { account = "batch" }',
            'budget[1].match.account: unknown account "batch" (accounts: default)',
            id="a budget matching an unknown account",
        ),
        pytest.param(
            '[[budget]]\nname = "b"\nlimit_usd = 1\nperiod = "day"\nmatch = { team = "search" }',
            "budget[1].match.team: unknown key (known: model, metadata, account, labels)",
            id="an unknown budget match key",
        ),
        pytest.param(
            '[[budget]]\nname = "b"\nlimit_usd = 1\nperiod = "day"\naction = "cancel"',
            "budget[1].action: unknown key (known: name, match, limit_usd, period, window, timezone, warn_at, "
            "on_exceed)",
            id="an unknown budget key",
        ),
    ],
)
def test_an_invalid_budget_or_price_is_rejected_with_its_key_path(text, message):
    assert error_of(text) == message


# --- rejecting invalid files ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            '[accounts.default]\napi_key = "sk-abc"',
            "accounts.default.api_key: API keys never go in the config file; "
            "use api_key_env, api_key_file or api_key_credential",
            id="an inline api key",
        ),
        pytest.param(
            f'[accounts.default]\napi_key_env = "{SECRET}"',
            "accounts.default.api_key_env: this looks like an API key; API keys never go in the config file; "
            "use api_key_env, api_key_file or api_key_credential",
            id="a key pasted as a key source",
        ),
        pytest.param(
            '[[policy]]\nname = "p"\nmax_runtme = "5m"',
            "policy[1].max_runtme: unknown key (known: name, match, max_queued, max_runtime, action, reserve_usd)",
            id="an unknown policy key",
        ),
        pytest.param(
            '[budgets]\nname = "b"',
            "budgets: unknown key (known: store, log, accounts, polling, policy, prices, service_tiers, estimate, "
            "budget, server, proxy, webhooks, cluster)",
            id="an unknown top-level table",
        ),
        pytest.param(
            '[[policy]]\nname = "p"\nmatch = { models = "o3*" }',
            "policy[1].match.models: unknown key (known: model, metadata, account, labels)",
            id="an unknown match key",
        ),
        pytest.param(
            "[polling]\nintervl = 5",
            "polling.intervl: unknown key (known: first, max_interval, backoff, jitter, confirm_window, lost_after)",
            id="an unknown polling key",
        ),
        pytest.param('[store]\npath = "/tmp/x.db"', "store.path: unknown key (known: url)", id="an unknown store key"),
        pytest.param(
            '[accounts.default]\nkey_env = "X"',
            "accounts.default.key_env: unknown key (known: base_url, api_key_env, api_key_file, api_key_credential, "
            "organization, project, max_concurrency, deadline_concurrency, request_timeout, max_reply_bytes)",
            id="an unknown account key",
        ),
        pytest.param(
            '[accounts.default]\napi_key_env = "A"\napi_key_file = "/k"',
            "accounts.default: give only one of api_key_env, api_key_file, api_key_credential "
            "(found api_key_env, api_key_file)",
            id="two key sources",
        ),
        pytest.param(
            '[accounts.default]\napi_key_env = "OPENAI API KEY"',
            "accounts.default.api_key_env: expected the name of an environment variable, such as OPENAI_API_KEY",
            id="a key variable that is not a variable name",
        ),
        pytest.param(
            '[accounts.default]\napi_key_file = "openai.key"',
            "accounts.default.api_key_file: expected an absolute path, such as /etc/tether/openai.key",
            id="a relative key file",
        ),
        pytest.param(
            '[accounts.default]\napi_key_credential = "a/b"',
            "accounts.default.api_key_credential: expected a credential name as given to LoadCredential=, "
            "such as openai-api-key",
            id="a credential name with a slash",
        ),
        pytest.param(
            '[accounts."my account"]',
            'accounts.my account: invalid name "my account" (use letters, digits, _, - and .)',
            id="an account name with a space",
        ),
        pytest.param(
            "[accounts]",
            "accounts: no account defined; add [accounts.NAME] or remove the empty table",
            id="an empty accounts table",
        ),
        pytest.param(
            'accounts = "default"', 'accounts: expected a table, got "default"', id="accounts that are not a table"
        ),
        pytest.param(
            '[accounts.default]\nbase_url = "api.openai.com"',
            'accounts.default.base_url: expected an http:// or https:// URL, got "api.openai.com"',
            id="a base url without a scheme",
        ),
        pytest.param(
            '[accounts.default]\nbase_url = "https://"',
            'accounts.default.base_url: the URL names no host: "https://"',
            id="a base url without a host",
        ),
        pytest.param(
            '[accounts.default]\nbase_url = "http://localhost:80a0/v1"',
            'accounts.default.base_url: not a valid URL (its port?): "http://localhost:80a0/v1"',
            id="a base url with a bad port",
        ),
        pytest.param(
            '[accounts.default]\nmax_concurrency = "16"',
            'accounts.default.max_concurrency: expected an integer >= 1, got "16"',
            id="a concurrency given as a string",
        ),
        pytest.param(
            "[accounts.default]\nmax_concurrency = 0",
            "accounts.default.max_concurrency: expected an integer >= 1, got 0",
            id="a concurrency of zero",
        ),
        pytest.param(
            "[accounts.default]\ndeadline_concurrency = 0",
            "accounts.default.deadline_concurrency: expected an integer >= 1, got 0",
            id="a deadline concurrency of zero",
        ),
        pytest.param(
            "[accounts.default]\nmax_concurrency = true",
            "accounts.default.max_concurrency: expected an integer >= 1, got true",
            id="a concurrency given as a boolean",
        ),
        pytest.param(
            "[accounts.default]\nmax_reply_bytes = 100",
            "accounts.default.max_reply_bytes: expected an integer >= 1024, got 100",
            id="a reply bound under 1 KiB",
        ),
        pytest.param(
            '[accounts.default]\nmax_reply_bytes = "8MiB"',
            'accounts.default.max_reply_bytes: expected an integer >= 1024, got "8MiB"',
            id="a reply bound that is not an integer",
        ),
        pytest.param(
            '[accounts.default]\nrequest_timeout = "0s"',
            'accounts.default.request_timeout: expected a duration > 0, got "0s"',
            id="a request timeout of zero",
        ),
        pytest.param(
            '[accounts.default]\norganization = ""',
            'accounts.default.organization: expected a non-empty string, got ""',
            id="an empty organization",
        ),
        pytest.param(
            "[polling]\nfirst = true", "polling.first: expected a duration, got true", id="a boolean duration"
        ),
        pytest.param(
            "[polling]\nbackoff = 0.5", "polling.backoff: expected a number >= 1, got 0.5", id="a shrinking backoff"
        ),
        pytest.param(
            '[polling]\nbackoff = "1.5"',
            'polling.backoff: expected a number >= 1, got "1.5"',
            id="a backoff given as a string",
        ),
        pytest.param(
            "[polling]\njitter = 1.0", "polling.jitter: expected a number >= 0 and < 1, got 1.0", id="a jitter of one"
        ),
        pytest.param(
            "[polling]\njitter = -0.1",
            "polling.jitter: expected a number >= 0 and < 1, got -0.1",
            id="a negative jitter",
        ),
        pytest.param(
            "[polling]\nlost_after = 0",
            "polling.lost_after: expected an integer >= 1, got 0",
            id="lost after zero 404s",
        ),
        pytest.param(
            "[polling]\nmax_interval = 0", "polling.max_interval: expected a duration > 0, got 0", id="no max interval"
        ),
        pytest.param(
            '[polling]\nfirst = "2m"',
            "polling.first: must not exceed polling.max_interval (120s > 60s)",
            id="a first poll later than the max interval",
        ),
        pytest.param(
            '[log]\nlevel = "verbose"',
            'log.level: expected one of debug, info, warning, error, got "verbose"',
            id="an unknown log level",
        ),
        pytest.param(
            '[log]\nformat = "text"',
            'log.format: expected one of auto, json, console, got "text"',
            id="an unknown log format",
        ),
        pytest.param(
            '[store]\nurl = ""',
            "store.url: expected a URL starting with sqlite:///, postgresql:// or postgresql+psycopg://",
            id="an empty store url",
        ),
        pytest.param(
            '[store]\nurl = "mysql://u:pw@h/db"',
            "store.url: expected a URL starting with sqlite:///, postgresql:// or postgresql+psycopg://",
            id="an unsupported store url, not echoed",
        ),
        pytest.param(
            '[store]\nurl = "sqlite://tether.db"',
            "store.url: expected a URL starting with sqlite:///, postgresql:// or postgresql+psycopg://",
            id="a sqlite url with two slashes",
        ),
        pytest.param(
            '[store]\nurl = "postgresql+psycopg2://tether@db/tether"',
            "store.url: expected a URL starting with sqlite:///, postgresql:// or postgresql+psycopg://",
            id="a postgresql url naming a driver tether does not use",
        ),
        pytest.param(
            '[store]\nurl = "postgresql://tether:hunter2@db/tether"',
            "store.url: a password in the URL is a secret in the config file; leave it out and give it "
            "the way PostgreSQL's client reads one: a password file (PGPASSFILE, ~/.pgpass) or PGPASSWORD",
            id="a password in a postgresql url, not echoed",
        ),
        pytest.param(
            '[policy]\nname = "p"',
            "policy: expected an array of tables ([[policy]]), got a table",
            id="a single policy table",
        ),
        pytest.param("policy = [1]", "policy[1]: expected a table, got 1", id="a policy that is not a table"),
        pytest.param(
            '[[policy]]\nmax_runtime = "1h"',
            "policy[1].name: missing; every [[policy]] needs a name",
            id="a policy without a name",
        ),
        pytest.param(
            '[[policy]]\nname = "a"\n[[policy]]\nname = "deep research"',
            'policy[2].name: invalid name "deep research" (use letters, digits, _, - and .)',
            id="a policy name with a space",
        ),
        pytest.param(
            '[[policy]]\nname = "a"\n[[policy]]\nname = "a"',
            'policy[2].name: duplicate policy name "a"',
            id="a duplicate policy name",
        ),
        pytest.param(
            '[[policy]]\nname = "p"\nmax_runtime = "5 minutes"',
            'policy[1].max_runtime: invalid duration "5 minutes" '
            '(write e.g. "90s", "5m", "1h30m", "2d", or a number of seconds)',
            id="a duration in words",
        ),
        pytest.param(
            '[[policy]]\nname = "p"\nmax_queued = -1',
            "policy[1].max_queued: expected a duration >= 0, got -1",
            id="a negative limit",
        ),
        pytest.param(
            '[[policy]]\nname = "p"\naction = "kill"',
            'policy[1].action: expected one of cancel, warn, got "kill"',
            id="an unknown action",
        ),
        pytest.param(
            '[[policy]]\nname = "p"\nreserve_usd = -1',
            "policy[1].reserve_usd: expected a number >= 0, got -1",
            id="a negative reservation",
        ),
        pytest.param(
            '[[policy]]\nname = "a"\n[[policy]]\nname = "p"\nmatch = { model = [] }',
            "policy[2].match.model: expected a string or a non-empty array of strings, got an array",
            id="an empty model list",
        ),
        pytest.param(
            '[[policy]]\nname = "p"\nmatch = { model = 5 }',
            "policy[1].match.model: expected a string or a non-empty array of strings, got 5",
            id="a model that is a number",
        ),
        pytest.param(
            '[[policy]]\nname = "p"\nmatch = { metadata = { tier = 1 } }',
            "policy[1].match.metadata.tier: expected a string, got 1",
            id="a metadata value that is a number",
        ),
        pytest.param(
            '[[policy]]\nname = "p"\nmatch = { labels = { urgent = true } }',
            "policy[1].match.labels.urgent: expected a string, got true",
            id="a label value that is a boolean",
        ),
        pytest.param(
            '[[policy]]\nname = "p"\nmatch = { account = ["default", "batch"] }',
            'policy[1].match.account: unknown account "batch" (accounts: default)',
            id="a match on an unknown account",
        ),
    ],
)
def test_an_invalid_file_is_rejected_with_its_key_path(text, message):
    assert error_of(text) == message


def test_an_invalid_base_url_from_the_environment_is_rejected():
    assert error_of("", {"OPENAI_BASE_URL": "localhost:8000"}) == (
        '$OPENAI_BASE_URL: expected an http:// or https:// URL, got "localhost:8000"'
    )


# --- api keys ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("account", "source"),
    [
        ("", "env OPENAI_API_KEY"),
        ('api_key_env = "AZURE_OPENAI_KEY"', "env AZURE_OPENAI_KEY"),
        ('api_key_file = "/etc/tether/openai.key"', "file /etc/tether/openai.key"),
        ('api_key_credential = "openai-api-key"', "credential openai-api-key"),
    ],
)
def test_an_account_names_its_key_source(account, source):
    assert parse(f"[accounts.default]\n{account}").accounts["default"].key_source() == source


@pytest.mark.parametrize("source", ["env", "file", "credential"])
def test_an_api_key_is_read_from_its_source_without_surrounding_whitespace(tmp_path, source):
    (tmp_path / "openai.key").write_text(f"  {SECRET}\n")
    (tmp_path / "openai-api-key").write_text(f"{SECRET}\n")
    setting = {
        "env": 'api_key_env = "MY_KEY"',
        "file": f'api_key_file = "{tmp_path / "openai.key"}"',
        "credential": 'api_key_credential = "openai-api-key"',
    }[source]
    environ = {"MY_KEY": f"{SECRET}\n", "CREDENTIALS_DIRECTORY": str(tmp_path)}
    account = parse(f"[accounts.default]\n{setting}").accounts["default"]
    assert account.read_api_key(environ) == SECRET
    assert SECRET not in repr(account)


@pytest.mark.parametrize(
    ("setting", "environ", "files", "message"),
    [
        pytest.param(
            "",
            {},
            {},
            "accounts.default.api_key_env: environment variable OPENAI_API_KEY is not set",
            id="an unset variable",
        ),
        pytest.param(
            "",
            {"OPENAI_API_KEY": "  \n"},
            {},
            "accounts.default.api_key_env: the API key from env OPENAI_API_KEY is empty",
            id="a blank variable",
        ),
        pytest.param(
            'api_key_file = "{dir}/missing.key"',
            {},
            {},
            "accounts.default.api_key_file: cannot read {dir}/missing.key: No such file or directory",
            id="a missing key file",
        ),
        pytest.param(
            'api_key_file = "{dir}"',
            {},
            {},
            "accounts.default.api_key_file: cannot read {dir}: Is a directory",
            id="a key file that is a directory",
        ),
        pytest.param(
            'api_key_file = "{dir}/openai.key"',
            {},
            {"openai.key": ""},
            "accounts.default.api_key_file: the API key from file {dir}/openai.key is empty",
            id="an empty key file",
        ),
        pytest.param(
            'api_key_file = "{dir}/openai.key"',
            {},
            {"openai.key": f"{SECRET}\nsecond line"},
            "accounts.default.api_key_file: the API key from file {dir}/openai.key "
            "contains whitespace or control characters",
            id="a key file of two lines",
        ),
        pytest.param(
            'api_key_credential = "openai-api-key"',
            {},
            {},
            "accounts.default.api_key_credential: $CREDENTIALS_DIRECTORY is not set "
            "(start the service with LoadCredential=openai-api-key:PATH)",
            id="a credential outside systemd",
        ),
        pytest.param(
            'api_key_credential = "openai-api-key"',
            {"CREDENTIALS_DIRECTORY": "{dir}"},
            {},
            "accounts.default.api_key_credential: cannot read {dir}/openai-api-key: No such file or directory",
            id="a credential that was not loaded",
        ),
    ],
)
def test_an_unreadable_api_key_is_a_config_error_that_never_shows_the_key(tmp_path, setting, environ, files, message):
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    environ = {name: value.format(dir=tmp_path) for name, value in environ.items()}
    account = parse(f"[accounts.default]\n{setting.format(dir=tmp_path)}").accounts["default"]
    with pytest.raises(ConfigError) as caught:
        account.read_api_key(environ)
    assert str(caught.value) == message.format(dir=tmp_path)
    assert SECRET not in str(caught.value)


# --- webhooks ------------------------------------------------------------------------------------

WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
LISTEN = '[server]\nlisten = "127.0.0.1:8787"\n'  # the listener webhooks arrive on


def test_without_a_webhooks_table_webhooks_are_off():
    assert parse("").webhooks is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'secret_credential = "openai-webhook-secret"',
            config.WebhooksConfig(secret_credential="openai-webhook-secret", safety_poll=600.0),
        ),
        (
            'secret_env = "OPENAI_WEBHOOK_SECRET"\nsafety_poll = "30m"',
            config.WebhooksConfig(secret_env="OPENAI_WEBHOOK_SECRET", safety_poll=1800.0),
        ),
        (
            'secret_file = "/etc/tether/webhook.secret"\nsafety_poll = 90',
            config.WebhooksConfig(secret_file="/etc/tether/webhook.secret", safety_poll=90.0),
        ),
    ],
)
def test_the_webhooks_table_names_one_secret_source_and_a_safety_poll(text, expected):
    assert parse(f"{LISTEN}[webhooks]\n{text}").webhooks == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            f'secret = "{WEBHOOK_SECRET}"',
            "webhooks.secret: the signing secret never goes in the config file; "
            "use secret_credential, secret_env or secret_file",
            id="an inline secret",
        ),
        pytest.param(
            "",
            "webhooks: give exactly one of secret_credential, secret_env, secret_file",
            id="no secret source",
        ),
        pytest.param(
            'secret_env = "S"\nsecret_file = "/s"',
            "webhooks: give exactly one of secret_credential, secret_env, secret_file (found secret_env, secret_file)",
            id="two secret sources",
        ),
        pytest.param(
            f'secret_env = "{WEBHOOK_SECRET}"',
            "webhooks.secret_env: expected the name of an environment variable, such as OPENAI_API_KEY",
            id="a secret pasted as its variable's name",
        ),
        pytest.param(
            'secret_file = "webhook.secret"',
            "webhooks.secret_file: expected an absolute path, such as /etc/tether/openai.key",
            id="a relative secret file",
        ),
        pytest.param(
            'secret_env = "S"\nsafety_poll = "0s"',
            'webhooks.safety_poll: expected a duration > 0, got "0s"',
            id="a safety poll of zero",
        ),
        pytest.param(
            'secret_env = "S"\nsafety_pol = "5m"',
            "webhooks.safety_pol: unknown key (known: secret_credential, secret_env, secret_file, safety_poll)",
            id="an unknown webhooks key",
        ),
        pytest.param('webhooks = "on"', 'webhooks: expected a table, got "on"', id="webhooks that are not a table"),
    ],
)
def test_an_invalid_webhooks_table_is_rejected_with_its_key_path(text, message):
    text = f"{text}\n{LISTEN}" if text.startswith("webhooks =") else f"{LISTEN}[webhooks]\n{text}"
    message_found = error_of(text)
    assert message_found == message
    assert WEBHOOK_SECRET not in message_found


@pytest.mark.parametrize("source", ["env", "file", "credential"])
def test_a_webhook_secret_is_read_from_its_source_without_surrounding_whitespace(tmp_path, source):
    (tmp_path / "webhook.secret").write_text(f"  {WEBHOOK_SECRET}\n")
    (tmp_path / "openai-webhook-secret").write_text(f"{WEBHOOK_SECRET}\n")
    setting = {
        "env": 'secret_env = "HOOK"',
        "file": f'secret_file = "{tmp_path / "webhook.secret"}"',
        "credential": 'secret_credential = "openai-webhook-secret"',
    }[source]
    environ = {"HOOK": f"{WEBHOOK_SECRET}\n", "CREDENTIALS_DIRECTORY": str(tmp_path)}
    webhooks = parse(f"{LISTEN}[webhooks]\n{setting}").webhooks
    assert webhooks.read_secret(environ) == WEBHOOK_SECRET
    assert WEBHOOK_SECRET not in repr(webhooks)


@pytest.mark.parametrize(
    ("setting", "environ", "files", "message"),
    [
        pytest.param(
            'secret_env = "HOOK"',
            {},
            {},
            "webhooks.secret_env: environment variable HOOK is not set",
            id="an unset variable",
        ),
        pytest.param(
            'secret_env = "HOOK"',
            {"HOOK": " \n"},
            {},
            "webhooks.secret_env: the secret from env HOOK is empty",
            id="a blank variable",
        ),
        pytest.param(
            'secret_file = "{dir}/missing.secret"',
            {},
            {},
            "webhooks.secret_file: cannot read {dir}/missing.secret: No such file or directory",
            id="a missing secret file",
        ),
        pytest.param(
            'secret_file = "{dir}/webhook.secret"',
            {},
            {"webhook.secret": "whsec_a"},
            "webhooks.secret_file: the secret from file {dir}/webhook.secret is not a webhook signing secret "
            "(expected whsec_ followed by base64, as the OpenAI dashboard shows it)",
            id="a secret that is not base64",
        ),
        pytest.param(
            'secret_credential = "openai-webhook-secret"',
            {},
            {},
            "webhooks.secret_credential: $CREDENTIALS_DIRECTORY is not set "
            "(start the service with LoadCredential=openai-webhook-secret:PATH)",
            id="a credential outside systemd",
        ),
        pytest.param(
            'secret_credential = "openai-webhook-secret"',
            {"CREDENTIALS_DIRECTORY": "{dir}"},
            {},
            "webhooks.secret_credential: cannot read {dir}/openai-webhook-secret: No such file or directory",
            id="a credential that was not loaded",
        ),
    ],
)
def test_an_unreadable_webhook_secret_is_a_config_error_that_never_shows_it(tmp_path, setting, environ, files, message):
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    environ = {name: value.format(dir=tmp_path) for name, value in environ.items()}
    webhooks = parse(f"{LISTEN}[webhooks]\n{setting.format(dir=tmp_path)}").webhooks
    with pytest.raises(ConfigError) as caught:
        webhooks.read_secret(environ)
    assert str(caught.value) == message.format(dir=tmp_path)
    assert "whsec_a" not in str(caught.value)


def test_an_inline_webhook_secret_stops_check_config_and_run_with_78_naming_the_key(tether):
    tether.write_config()
    with tether.config_path.open("a") as file:
        file.write(f'\n{LISTEN}[webhooks]\nsecret = "{WEBHOOK_SECRET}"\n')
    for command in ("check-config", "run"):
        result = tether.cli(command)
        assert result.returncode == 78, result.stdout + result.stderr
        assert "webhooks.secret: the signing secret never goes in the config file" in result.stderr
        assert WEBHOOK_SECRET not in result.stdout + result.stderr


def test_run_refuses_to_start_with_78_when_the_webhook_secret_cannot_be_read(tether):
    tether.write_config()
    with tether.config_path.open("a") as file:
        file.write(f'\n{LISTEN}[webhooks]\nsecret_env = "TETHER_TEST_WEBHOOK_SECRET"\n')
    result = tether.cli("run")
    assert result.returncode == 78, result.stdout + result.stderr
    assert "webhooks.secret_env: environment variable TETHER_TEST_WEBHOOK_SECRET is not set" in result.stderr
    checked = tether.ok("check-config")  # check-config warns about it, and passes
    assert "webhooks.secret_env: environment variable TETHER_TEST_WEBHOOK_SECRET is not set" in checked.stderr


def test_webhooks_without_a_listener_stop_check_config_and_run_with_78_naming_webhooks(tether):
    tether.write_config()
    with tether.config_path.open("a") as file:
        file.write('\n[webhooks]\nsecret_env = "TETHER_TEST_WEBHOOK_SECRET"\n')
    tether.extra_env["TETHER_TEST_WEBHOOK_SECRET"] = WEBHOOK_SECRET
    for command in ("check-config", "run"):
        result = tether.cli(command)
        assert result.returncode == 78, result.stdout + result.stderr
        assert "webhooks: needs [server] listen" in result.stderr


def test_a_key_file_that_is_not_text_is_a_config_error(tmp_path):
    (tmp_path / "openai.key").write_bytes(b"\xff\xfe" + SECRET.encode())
    account = parse(f'[accounts.default]\napi_key_file = "{tmp_path}/openai.key"').accounts["default"]
    with pytest.raises(ConfigError, match=r"^accounts\.default\.api_key_file: .*openai\.key is not UTF-8 text$"):
        account.read_api_key({})


# --- policy selection ----------------------------------------------------------------------------

POLICIES = """
[accounts.default]
[accounts.batch]
[[policy]]
name = "deep-research"
match = { model = "o3-deep-research*" }
[[policy]]
name = "batch"
match = { account = "batch" }
[[policy]]
name = "nightly"
match = { labels = { pipeline = "nightly" } }
[[policy]]
name = "everything-else"
match = { metadata = { team = "search" } }
"""


@pytest.mark.parametrize(
    ("request_", "policy"),
    [
        pytest.param({"named": "batch"}, "batch", id="the policy named at track time wins"),
        pytest.param(
            {"named": "batch", "metadata": {"tether_policy": "nightly", "team": "search"}},
            "batch",
            id="track time beats metadata",
        ),
        pytest.param({"metadata": {"tether_policy": "nightly"}}, "nightly", id="metadata tether_policy beats matching"),
        pytest.param({"named": "gone"}, "deep-research", id="an unknown name falls back to matching"),
        pytest.param(
            {"metadata": {"tether_policy": "gone", "team": "search"}},
            "deep-research",
            id="an unknown metadata name falls back to matching",
        ),
        pytest.param({"account": "batch"}, "deep-research", id="the first matching policy wins"),
        pytest.param({"model": "o3-pro", "account": "batch"}, "batch", id="a later policy matches when earlier do not"),
        pytest.param({"model": "o3-pro", "labels": {"pipeline": "nightly"}}, "nightly", id="labels select a policy"),
        pytest.param(
            {"model": None, "metadata": {"team": "search"}}, "everything-else", id="metadata selects a policy"
        ),
        pytest.param({"model": "o3-pro"}, None, id="no policy fits"),
    ],
)
def test_a_response_gets_its_policy_in_spec_order(request_, policy):
    cfg = parse(POLICIES)
    response = {"named": None, "model": "o3-deep-research", "metadata": None, "account": "default", "labels": None}
    selected = cfg.select_policy(**{**response, **request_})
    assert (selected.name if selected else None) == policy


@pytest.mark.parametrize(("name", "found"), [("batch", "batch"), ("nightly", "nightly"), ("gone", None)])
def test_a_policy_is_found_by_name(name, found):
    policy = parse(POLICIES).policy_named(name)
    assert (policy.name if policy else None) == found


# --- locations -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "url"),
    [
        ({"STATE_DIRECTORY": "/var/lib/tether"}, "sqlite:////var/lib/tether/tether.db"),
        ({"STATE_DIRECTORY": "/var/lib/tether:/var/lib/other"}, "sqlite:////var/lib/tether/tether.db"),
        ({"XDG_STATE_HOME": "/srv/state", "HOME": "/home/op"}, "sqlite:////srv/state/tether/tether.db"),
        ({"HOME": "/home/op"}, "sqlite:////home/op/.local/state/tether/tether.db"),
        ({"XDG_STATE_HOME": "relative", "HOME": "/home/op"}, "sqlite:////home/op/.local/state/tether/tether.db"),
    ],
)
def test_the_default_store_is_in_the_state_directory(environ, url):
    assert config.default_store_url(environ) == url


@pytest.mark.parametrize(
    ("existing", "cli", "env", "found"),
    [
        pytest.param(["a.toml", "cwd/tether.toml"], "a.toml", None, "a.toml", id="--config first"),
        pytest.param(["b.toml", "cwd/tether.toml"], None, "b.toml", "b.toml", id="then TETHER_CONFIG"),
        pytest.param(["cwd/tether.toml", "xdg/tether/tether.toml"], None, None, "cwd/tether.toml", id="then ./"),
        pytest.param(
            ["xdg/tether/tether.toml", "etc/tether.toml"], None, None, "xdg/tether/tether.toml", id="then XDG"
        ),
        pytest.param(
            ["home/.config/tether/tether.toml"],
            None,
            None,
            "home/.config/tether/tether.toml",
            id="XDG defaults to ~/.config",
        ),
        pytest.param(["etc/tether.toml"], None, None, "etc/tether.toml", id="then /etc"),
        pytest.param([], None, None, None, id="else none"),
    ],
)
def test_the_config_file_is_found_in_spec_order(tmp_path, monkeypatch, existing, cli, env, found):
    monkeypatch.setattr(loader, "SYSTEM_CONFIG", tmp_path / "etc/tether.toml")
    for name in existing:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    environ = {"HOME": str(tmp_path / "home")}
    if env:
        environ["TETHER_CONFIG"] = str(tmp_path / env)
    if "xdg/tether/tether.toml" in existing:
        environ["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")
    (tmp_path / "cwd").mkdir(exist_ok=True)
    path = config.find_config_path(cli and str(tmp_path / cli), environ, tmp_path / "cwd")
    assert path == (tmp_path / found if found else None)


@pytest.mark.parametrize(("cli", "env"), [("a.toml", None), (None, "a.toml")])
def test_a_relative_config_path_is_taken_from_the_working_directory(tmp_path, cli, env):
    (tmp_path / "a.toml").write_text("")
    environ = {"TETHER_CONFIG": env} if env else {}
    assert config.find_config_path(cli, environ, tmp_path) == tmp_path / "a.toml"


@pytest.mark.parametrize(
    ("cli", "environ", "message"),
    [
        ("missing.toml", {}, "config file missing.toml does not exist"),
        (None, {"TETHER_CONFIG": "missing.toml"}, "config file missing.toml does not exist (named by $TETHER_CONFIG)"),
    ],
)
def test_a_named_config_file_must_exist(tmp_path, cli, environ, message):
    with pytest.raises(ConfigError) as caught:
        config.find_config_path(cli, environ, tmp_path)
    assert str(caught.value) == message


def test_without_a_file_the_defaults_are_loaded(tmp_path, monkeypatch):
    monkeypatch.setattr(loader, "SYSTEM_CONFIG", tmp_path / "absent.toml")
    cfg = load_config(None, {"HOME": str(tmp_path), "STATE_DIRECTORY": "/var/lib/tether"}, tmp_path)
    assert cfg.path is None
    assert list(cfg.accounts) == ["default"]
    assert cfg.store.url == "sqlite:////var/lib/tether/tether.db"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(
            b"[log]\nlevel info\n",
            "{path}: Expected '=' after a key in a key/value pair (at line 2, column 7)",
            id="a syntax error",
        ),
        pytest.param(b'[log]\nlevel = "\xff"\n', "{path}: not UTF-8 text", id="bytes that are not UTF-8"),
        pytest.param(None, "{path}: cannot read: Is a directory", id="a directory"),
    ],
)
def test_an_unreadable_file_is_a_config_error_naming_the_file(tmp_path, content, message):
    path = tmp_path / "tether.toml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), {})
    assert str(caught.value) == message.format(path=path)


@pytest.mark.parametrize(
    ("mode", "warned"),
    [(0o600, None), (0o400, None), (0o640, "its group"), (0o604, "others"), (0o644, "group and others")],
    ids=["0600", "0400", "group-readable", "other-readable", "world-readable"],
)
def test_a_key_file_readable_by_group_or_others_is_warned_about(tmp_path, mode, warned):
    key_file = tmp_path / "openai.key"
    key_file.write_text("sk-test-value\n")
    key_file.chmod(mode)
    config = parse_config({"accounts": {"default": {"api_key_file": str(key_file)}}})
    warning = config.accounts["default"].key_file_warning()
    if warned is None:
        assert warning is None
    else:
        assert warning is not None and warned in warning and "chmod 600" in warning
        assert "sk-test-value" not in warning


# ---- [server] ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "socket"),
    [
        ({"RUNTIME_DIRECTORY": "/run/tether", "XDG_RUNTIME_DIR": "/run/user/1000"}, "/run/tether/tether.sock"),
        ({"RUNTIME_DIRECTORY": "/run/tether:/run/other"}, "/run/tether/tether.sock"),
        ({"XDG_RUNTIME_DIR": "/run/user/1000"}, "/run/user/1000/tether/tether.sock"),
        ({"XDG_RUNTIME_DIR": "relative"}, None),
        ({}, None),
    ],
)
def test_the_default_socket_is_in_the_runtime_directory(environ, socket):
    cfg = parse("", environ)
    assert cfg.server == config.ServerConfig(socket=socket)
    assert cfg.server.read_token({}) is None


def test_every_server_setting_is_read(tmp_path):
    cfg = parse('[server]\nsocket = "/run/t/t.sock"\nlisten = "127.0.0.1:8787"\ntoken_env = "T"', {})
    assert cfg.server == config.ServerConfig(socket="/run/t/t.sock", listen=("127.0.0.1", 8787), token_env="T")
    assert parse(
        '[server]\nsocket = ""\nlisten = "[::1]:9"', {"XDG_RUNTIME_DIR": "/run/user/1"}
    ).server == config.ServerConfig(socket=None, listen=("::1", 9))
    token = tmp_path / "token"
    token.write_text("  abcdefghijklmnopqrstuvwxyz\n")
    from_file = parse(f'[server]\ntoken_file = "{token}"', {}).server
    assert from_file.read_token({}) == "abcdefghijklmnopqrstuvwxyz"
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "tether-token").write_text("0123456789abcdef0123")
    from_credential = parse('[server]\ntoken_credential = "tether-token"', {}).server
    assert from_credential.read_token({"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")}) == "0123456789abcdef0123"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[server]\nsocket = "run/t.sock"',
            'server.socket: expected an absolute path, such as /run/tether/tether.sock, or "" for none',
        ),
        (
            "[server]\nsocket = 1",
            'server.socket: expected an absolute path, such as /run/tether/tether.sock, or "" for none',
        ),
        (
            f'[server]\nsocket = "/{"x" * 120}"',
            f"server.socket: /{'x' * 120} is longer than a Unix socket path may be (107 bytes)",
        ),
        (
            '[server]\nlisten = "8787"',
            'server.listen: expected HOST:PORT, such as "127.0.0.1:8787" or "[::1]:8787", got "8787"',
        ),
        (
            '[server]\nlisten = "127.0.0.1:99999"',
            'server.listen: expected HOST:PORT, such as "127.0.0.1:8787" or "[::1]:8787", got "127.0.0.1:99999"',
        ),
        ('[server]\nlisten = ""', 'server.listen: expected a non-empty string, got ""'),
        (
            '[server]\ntoken = "s3cret-token-inline"',
            "server.token: unknown key (known: socket, listen, token_env, token_file, token_credential)",
        ),
        (
            '[server]\ntoken_env = "T"\ntoken_file = "/etc/t"',
            "server: give only one of token_env, token_file, token_credential (found token_env, token_file)",
        ),
        (
            '[server]\ntoken_file = "etc/t"',
            "server.token_file: expected an absolute path, such as /etc/tether/openai.key",
        ),
        (
            '[server]\ntoken_env = "not a name"',
            "server.token_env: expected the name of an environment variable, such as OPENAI_API_KEY",
        ),
        ("server = 1", "server: expected a table, got 1"),
    ],
)
def test_an_invalid_server_table_is_rejected_with_its_key_path(text, message):
    assert error_of(text) == message


@pytest.mark.parametrize(
    ("setting", "environ", "message"),
    [
        ('token_env = "T"', {}, "server.token_env: environment variable T is not set"),
        (
            'token_env = "T"',
            {"T": "short"},
            "server.token_env: the token must be at least 16 printable characters without spaces",
        ),
        (
            'token_file = "/nonexistent/token"',
            {},
            "server.token_file: cannot read /nonexistent/token: No such file or directory",
        ),
        (
            'token_credential = "tok"',
            {},
            "server.token_credential: $CREDENTIALS_DIRECTORY is not set (start the service with LoadCredential=tok:PATH)",
        ),
    ],
)
def test_an_unreadable_token_is_a_config_error_that_never_shows_it(setting, environ, message):
    server = parse(f"[server]\n{setting}", {}).server
    with pytest.raises(ConfigError) as caught:
        server.read_token(environ)
    assert str(caught.value) == message


def test_a_token_that_cannot_be_read_stops_the_start_with_exit_78(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "t.toml"
    path.write_text(
        f'[store]\nurl = "sqlite:///{tmp_path}/t.db"\n[server]\nsocket = ""\ntoken_env = "TETHER_NO_TOKEN"\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "tether", "--config", str(path), "run"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin", "OPENAI_API_KEY": "sk-x-0123456789"},
    )
    assert result.returncode == 78
    assert "server.token_env: environment variable TETHER_NO_TOKEN is not set" in result.stderr


# --- [proxy] -------------------------------------------------------------------------------------


def test_the_proxy_is_off_by_default_on_the_default_account_passing_the_client_key():
    assert parse("").proxy == config.ProxyConfig(enabled=False, account="default", key="client", max_body=32 * 1024**2)
    # Without an account called "default", the first one is the proxy's.
    assert parse('[accounts.batch]\napi_key_env = "K"').proxy.account == "batch"


@pytest.mark.parametrize(
    ("max_body", "size"),
    [("16MiB", 16 * 1024**2), ("512KiB", 512 * 1024), ("1GiB", 1024**3), ("100B", 100), ("100", 100), (4096, 4096)],
)
def test_every_setting_of_the_proxy_is_read(max_body, size):
    text = (
        '[server]\nlisten = "127.0.0.1:8787"\ntoken_env = "T"\n[accounts.default]\n[accounts.batch]\napi_key_env = "K"\n'
        f'[proxy]\nenabled = true\naccount = "batch"\nkey = "account"\nmax_body = {json.dumps(max_body)}'
    )
    assert parse(text).proxy == config.ProxyConfig(enabled=True, account="batch", key="account", max_body=size)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('enabled = "yes"', 'proxy.enabled: expected true or false, got "yes"'),
        ('account = "batch"', 'proxy.account: unknown account "batch" (accounts: default)'),
        ('account = "a b"', 'proxy.account: invalid name "a b" (use letters, digits, _, - and .)'),
        ('key = "server"', 'proxy.key: expected one of client, account, got "server"'),
        (
            'max_body = "32MB"',
            'proxy.max_body: expected a size such as "32MiB", "512KiB" or a number of bytes, got "32MB"',
        ),
        ("max_body = 0", "proxy.max_body: expected a size of at least 1 byte, got 0"),
        ("max_body = true", 'proxy.max_body: expected a size such as "32MiB", "512KiB" or a number of bytes, got true'),
        ('listen = "0.0.0.0:8787"', "proxy.listen: unknown key (known: enabled, account, key, max_body)"),
    ],
)
def test_an_invalid_proxy_setting_is_rejected_with_its_key_path(text, message):
    assert error_of(f"[proxy]\n{text}") == message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[proxy]\nenabled = true", "proxy.enabled: needs [server] listen, the TCP listener that serves /v1/*"),
        (
            '[server]\nlisten = "127.0.0.1:8787"\n[proxy]\nenabled = true\nkey = "account"',
            'proxy.key: "account" needs a server token (server.token_file, token_env or token_credential): '
            "callers present it instead of an API key",
        ),
    ],
)
def test_a_proxy_without_the_listener_or_token_it_needs_is_rejected(text, message):
    assert error_of(text) == message


def test_a_proxy_whose_key_needs_a_token_stops_run_with_78_naming_proxy_key(tether):
    tether.write_config()
    with tether.config_path.open("a") as file:
        file.write('\n[server]\nlisten = "127.0.0.1:8787"\n[proxy]\nenabled = true\nkey = "account"\n')
    result = tether.cli("run")
    assert result.returncode == 78, result.stdout + result.stderr
    assert 'proxy.key: "account" needs a server token' in result.stderr


def test_check_config_warns_when_the_proxy_listens_beyond_loopback(tether):
    tether.write_config()
    with tether.config_path.open("a") as file:
        file.write('\n[server]\nlisten = "0.0.0.0:8787"\n[proxy]\nenabled = true\n')
    checked = tether.ok("check-config")
    assert "server.listen (0.0.0.0) is not a loopback address and the proxy is on" in checked.stderr
    file_text = tether.config_path.read_text().replace("0.0.0.0", "127.0.0.1")
    tether.config_path.write_text(file_text)
    assert "not a loopback address" not in tether.ok("check-config").stderr


def test_cluster_takeover_is_a_duration_of_ten_seconds_by_default():
    assert parse("").cluster.takeover == 10.0
    assert parse('[cluster]\ntakeover = "3s"\n').cluster.takeover == 3.0


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"1s"', 'cluster.takeover: expected a duration of at least 2s, got "1s"'),
        ('"soon"', 'cluster.takeover: invalid duration "soon"'),
        ("true", "cluster.takeover: expected a duration, got true"),
    ],
)
def test_a_bad_cluster_takeover_is_rejected_naming_its_key(value, message):
    with pytest.raises(ConfigError) as caught:
        parse(f"[cluster]\ntakeover = {value}\n")
    assert str(caught.value).startswith(message)


def test_an_unknown_cluster_key_stops_run_with_78_naming_it(tether):
    tether.write_config()
    with tether.config_path.open("a") as file:
        file.write("\n[cluster]\nshards = 8\n")
    result = tether.cli("run")
    assert result.returncode == 78, result.stdout + result.stderr
    assert "cluster.shards" in result.stderr
