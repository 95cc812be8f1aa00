import tomllib
from types import MappingProxyType

import pytest

from tether.config import Price, parse_config
from tether.pricing import PRICES_AS_OF, PRICES_SOURCE, Pricing, builtin_prices, builtin_tiers, resolve_model


def pricing(text: str = "") -> Pricing:
    return Pricing.from_config(parse_config(tomllib.loads(text), environ={}))


def usage(input_tokens=0, cached=0, output=0, reasoning=0):
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": input_tokens + output,
    }


# --- the built-in table ----------------------------------------------------------------------------


def test_the_builtin_table_states_its_date_and_source():
    assert PRICES_AS_OF == "2025-12"
    assert "openai.com" in PRICES_SOURCE and "standard tier" in PRICES_SOURCE


PUBLISHED = [
    ("gpt-5.2", Price(1.75, 0.175, 14.0)),
    ("gpt-5.2-pro", Price(21.0, 21.0, 168.0)),
    ("gpt-5.1", Price(1.25, 0.125, 10.0)),
    ("gpt-5", Price(1.25, 0.125, 10.0)),
    ("gpt-5-mini", Price(0.25, 0.025, 2.0)),
    ("gpt-5-nano", Price(0.05, 0.005, 0.4)),
    ("gpt-5-pro", Price(15.0, 15.0, 120.0)),
    ("gpt-5-codex", Price(1.25, 0.125, 10.0)),
    ("gpt-5.1-codex", Price(1.25, 0.125, 10.0)),
    ("o1", Price(15.0, 7.5, 60.0)),
    ("o1-pro", Price(150.0, 150.0, 600.0)),
    ("o3", Price(2.0, 0.5, 8.0)),
    ("o3-pro", Price(20.0, 20.0, 80.0)),
    ("o4-mini", Price(1.1, 0.275, 4.4)),
    ("o3-deep-research", Price(10.0, 2.5, 40.0)),
    ("o4-mini-deep-research", Price(2.0, 0.5, 8.0)),
    ("gpt-4.1", Price(2.0, 0.5, 8.0)),
    ("gpt-4.1-mini", Price(0.4, 0.1, 1.6)),
    ("gpt-4.1-nano", Price(0.1, 0.025, 0.4)),
    ("gpt-4o", Price(2.5, 1.25, 10.0)),
    ("gpt-4o-mini", Price(0.15, 0.075, 0.6)),
]


@pytest.mark.parametrize(("model", "price"), PUBLISHED, ids=[model for model, _ in PUBLISHED])
def test_the_builtin_table_has_each_models_published_price(model, price):
    assert builtin_prices()[model] == price


def test_the_builtin_table_has_exactly_the_published_models():
    assert sorted(builtin_prices()) == sorted(model for model, _ in PUBLISHED)


def test_the_builtin_tables_cannot_be_changed():
    with pytest.raises(TypeError):
        builtin_prices()["o3"] = Price(0, 0, 0)  # type: ignore[index]
    with pytest.raises(TypeError):
        builtin_tiers()["flex"] = 1.0  # type: ignore[index]


# --- resolving a model to its price ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "key"),
    [
        pytest.param("o3", "o3", id="an exact model is itself"),
        pytest.param("o3-2025-04-16", "o3", id="a dated o3 snapshot is o3"),
        pytest.param("gpt-4o-2024-08-06", "gpt-4o", id="a dated gpt-4o snapshot is gpt-4o"),
        pytest.param("o3-deep-research-2025-06-26", "o3-deep-research", id="a dated deep research snapshot"),
        pytest.param("gpt-5-2025-08-07", "gpt-5", id="a dated gpt-5 snapshot is gpt-5"),
        pytest.param("o3-pro", "o3-pro", id="o3-pro is not o3"),
        pytest.param("gpt-5-pro", "gpt-5-pro", id="gpt-5-pro is not gpt-5"),
        pytest.param("o3-pro-2025-06-10", "o3-pro", id="a dated o3-pro snapshot is o3-pro, not o3"),
        pytest.param("o3-mini", None, id="an unlisted sibling is never priced as its prefix"),
        pytest.param("gpt-5-turbo", None, id="an unknown suffix is never stripped"),
        pytest.param("gpt-4o-2024-08", None, id="a partial date is not a snapshot"),
        pytest.param("o3-20250416", None, id="an undashed date is not a snapshot"),
        pytest.param("2025-04-16", None, id="a bare date is not a snapshot"),
        pytest.param("O3", None, id="model names are case sensitive"),
        pytest.param("meta-llama/Llama-3.1-8B", None, id="an open model is unknown"),
    ],
)
def test_a_model_resolves_to_itself_or_its_snapshots_base_and_never_to_a_prefix(model, key):
    assert resolve_model(model, builtin_prices()) == key


def test_a_snapshot_with_its_own_price_uses_it():
    table = {"o3": Price(2, 0.5, 8), "o3-2025-04-16": Price(1, 1, 1)}
    assert resolve_model("o3-2025-04-16", table) == "o3-2025-04-16"


# --- config overrides ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "model", "price"),
    [
        pytest.param(
            '[prices."o3-pro"]\ninput = 10\noutput = 40', "o3-pro", Price(10, 10, 40), id="a config price overrides"
        ),
        pytest.param(
            '[prices."o3-pro"]\ninput = 10\noutput = 40',
            "o3-pro-2025-06-10",
            Price(10, 10, 40),
            id="an override applies to the models snapshots",
        ),
        pytest.param(
            '[prices."my-model"]\ninput = 1\ncached_input = 0.5\noutput = 2',
            "my-model",
            Price(1, 0.5, 2),
            id="a config price extends the table",
        ),
        pytest.param(
            '[prices."o3-pro"]\ninput = 10\noutput = 40', "o3", Price(2, 0.5, 8), id="other models keep their price"
        ),
        pytest.param("", "my-model", None, id="an unknown model has no price"),
        pytest.param("", None, None, id="a response without a model has no price"),
    ],
)
def test_config_prices_override_and_extend_the_builtin_table(config, model, price):
    assert pricing(config).price(model) == price


@pytest.mark.parametrize(
    ("config", "tier", "multiplier"),
    [
        pytest.param("", "flex", 0.5, id="flex is half price"),
        pytest.param("", "priority", 2.0, id="priority is about double"),
        pytest.param("", "default", 1.0, id="default is full price"),
        pytest.param("", "auto", 1.0, id="auto is full price"),
        pytest.param("", "scale", 1.0, id="scale is full price"),
        pytest.param("", "turbo", 1.0, id="an unknown tier is full price"),
        pytest.param("", None, 1.0, id="no tier is full price"),
        pytest.param("[service_tiers]\npriority = 1.75", "priority", 1.75, id="a config tier overrides"),
        pytest.param("[service_tiers]\npriority = 1.75", "flex", 0.5, id="other tiers keep their multiplier"),
        pytest.param("[service_tiers]\nturbo = 3", "turbo", 3.0, id="a config tier extends"),
    ],
)
def test_the_reported_service_tier_sets_the_multiplier(config, tier, multiplier):
    assert pricing(config).multiplier(tier) == multiplier


def test_a_pricing_made_from_explicit_tables_uses_only_them():
    explicit = Pricing({"m": Price(1, 1, 1)}, {}, 10.0)
    assert (explicit.price("o3"), explicit.multiplier("flex"), explicit.output_tokens_per_second) == (None, 1.0, 10.0)
    assert explicit.prices == MappingProxyType({"m": Price(1, 1, 1)})


# --- costs -----------------------------------------------------------------------------------------


def test_a_worked_example_costs_exactly_what_a_hand_calculation_says():
    # o3-pro at $20 input / $20 cached / $80 output per 1M tokens:
    #   10,000 uncached input × $20 / 1M = $0.20
    #    2,000 cached input   × $20 / 1M = $0.04
    #   30,000 output         × $80 / 1M = $2.40      -> $2.64
    assert pricing().cost("o3-pro", usage(12_000, cached=2_000, output=30_000), None) == pytest.approx(2.64)
    # The same usage on o3 ($2 / $0.50 / $8), where the cached rate differs:
    #   10,000 × $2 = $0.02;  2,000 × $0.50 = $0.001;  30,000 × $8 = $0.24   -> $0.261, at flex × 0.5 -> $0.1305
    assert pricing().cost("o3-2025-04-16", usage(12_000, cached=2_000, output=30_000), "flex") == pytest.approx(0.1305)


@pytest.mark.parametrize(
    ("model", "usage_", "tier", "dollars"),
    [
        pytest.param("o3", usage(1_000_000), None, 2.0, id="a million input tokens cost the input price"),
        pytest.param("o3", usage(1_000_000, cached=1_000_000), None, 0.5, id="cached tokens cost the cached price"),
        pytest.param("o3", usage(1_000_000, cached=250_000), None, 1.625, id="input splits into cached and not"),
        pytest.param("o3", usage(output=1_000_000), None, 8.0, id="a million output tokens cost the output price"),
        pytest.param(
            "o3",
            usage(output=1_000_000, reasoning=900_000),
            None,
            8.0,
            id="reasoning tokens are inside output tokens and not counted twice",
        ),
        pytest.param("o3", usage(1_000_000, output=1_000_000), "flex", 5.0, id="flex halves the cost"),
        pytest.param("o3", usage(1_000_000, output=1_000_000), "priority", 20.0, id="priority doubles the cost"),
        pytest.param("o3", usage(1_000_000, output=1_000_000), "mystery", 10.0, id="an unknown tier is full price"),
        pytest.param("o3", usage(), None, 0.0, id="zero tokens cost nothing"),
        pytest.param(
            "o3", {"input_tokens": 1_000_000, "output_tokens": 0}, None, 2.0, id="missing details count as no cache"
        ),
        pytest.param(
            "o3",
            {"input_tokens": 1_000_000, "input_tokens_details": None, "output_tokens": 0},
            None,
            2.0,
            id="null details count as no cache",
        ),
        pytest.param("o3", {"output_tokens": 1_000_000}, None, 8.0, id="missing input counts as zero"),
        pytest.param("o3", {"input_tokens": 1_000_000}, None, 2.0, id="missing output counts as zero"),
    ],
)
def test_the_cost_is_usage_times_price_times_tier(model, usage_, tier, dollars):
    assert pricing().cost(model, usage_, tier) == pytest.approx(dollars)


def test_the_cost_uses_the_configured_price():
    text = '[prices."o3-pro"]\ninput = 10\ncached_input = 1\noutput = 40\n[service_tiers]\nflex = 0.25'
    # (900 × 10 + 100 × 1 + 1,000 × 40) / 1M × 0.25 = 49,100 / 1M / 4
    assert pricing(text).cost("o3-pro", usage(1_000, cached=100, output=1_000), "flex") == pytest.approx(0.012275)


@pytest.mark.parametrize(
    ("model", "usage_"),
    [
        pytest.param("my-model", usage(1_000, output=1_000), id="an unknown model, never zero"),
        pytest.param(None, usage(1_000, output=1_000), id="no model"),
        pytest.param("o3", None, id="no usage"),
        pytest.param("o3", {}, id="empty usage"),
        pytest.param("o3", {"total_tokens": 5}, id="usage without input or output tokens"),
        pytest.param("o3", [1, 2], id="usage that is not an object"),
        pytest.param("o3", {"input_tokens": -1, "output_tokens": 5}, id="negative input"),
        pytest.param("o3", {"input_tokens": 5, "output_tokens": -1}, id="negative output"),
        pytest.param("o3", {"input_tokens": "5", "output_tokens": 5}, id="a count given as a string"),
        pytest.param("o3", {"input_tokens": True, "output_tokens": 5}, id="a count given as a boolean"),
        pytest.param("o3", {"input_tokens": float("nan"), "output_tokens": 5}, id="a count that is not a number"),
        pytest.param(
            "o3", {"input_tokens": 5, "input_tokens_details": 3, "output_tokens": 5}, id="details that are no object"
        ),
        pytest.param(
            "o3",
            {"input_tokens": 5, "input_tokens_details": {"cached_tokens": -2}, "output_tokens": 5},
            id="negative cached tokens",
        ),
        pytest.param("o3", usage(100, cached=200, output=5), id="more cached tokens than input tokens"),
    ],
)
def test_an_unknown_price_or_malformed_usage_has_no_cost(model, usage_):
    assert pricing().cost(model, usage_, None) is None


# --- reservations ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "max_output_tokens", "reserve_usd", "tier", "dollars"),
    [
        pytest.param("o3-pro", 100_000, None, None, 8.0, id="max output tokens times the output price"),
        pytest.param("o3-pro", 100_000, 2.0, None, 8.0, id="max output tokens win over the policy reservation"),
        pytest.param("o3-pro-2025-06-10", 100_000, None, "flex", 4.0, id="a snapshot at flex"),
        pytest.param("o3-pro", None, 2.0, None, 2.0, id="without max output tokens the policy reservation"),
        pytest.param("o3-pro", None, 2.0, "flex", 2.0, id="the policy reservation is dollars as given"),
        pytest.param("my-model", 100_000, 2.0, None, 2.0, id="an unknown price falls back to the policy"),
        pytest.param("o3-pro", None, None, None, None, id="neither gives no reservation"),
        pytest.param("my-model", 100_000, None, None, None, id="an unknown price without a policy gives none"),
        pytest.param("o3-pro", -5, 2.0, None, 2.0, id="a nonsense max output tokens is ignored"),
        pytest.param("o3-pro", 0, 2.0, None, 0.0, id="a stated zero reserves nothing"),
    ],
)
def test_an_active_response_reserves_its_max_output_else_the_policy_reservation(
    model, max_output_tokens, reserve_usd, tier, dollars
):
    reserved = pricing().reservation(model, max_output_tokens, reserve_usd, tier)
    assert reserved == (None if dollars is None else pytest.approx(dollars))


# --- estimates -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "model", "tier", "ran", "max_output_tokens", "dollars"),
    [
        # 600 s × 50 tokens/s = 30,000 output tokens × $80 / 1M = $2.40
        pytest.param("", "o3-pro", None, 600.0, None, 2.4, id="ran seconds times tokens per second at output price"),
        pytest.param("", "o3-pro", "flex", 600.0, None, 1.2, id="the tier applies to estimates"),
        pytest.param("", "o3-pro", None, 600.0, 10_000, 0.8, id="capped at max output tokens"),
        pytest.param("", "o3-pro", None, 600.0, 50_000, 2.4, id="a cap above the estimate changes nothing"),
        # 600 s × 20 tokens/s = 12,000 tokens × $80 / 1M = $0.96
        pytest.param(
            "[estimate]\noutput_tokens_per_second = 20", "o3-pro", None, 600.0, None, 0.96, id="configured speed"
        ),
        pytest.param("", "o3-pro", None, 0.0, None, 0.0, id="a response that never ran costs nothing"),
        pytest.param("", "o3-pro", None, -3.0, None, 0.0, id="a negative run time counts as never ran"),
        pytest.param("", "my-model", None, 600.0, None, None, id="an unknown price has no estimate"),
        pytest.param("", "my-model", None, 0.0, None, None, id="an unknown price has no estimate even unrun"),
    ],
)
def test_a_response_without_usage_is_estimated_from_its_run_time(config, model, tier, ran, max_output_tokens, dollars):
    estimate = pricing(config).estimate(model, tier, ran, max_output_tokens)
    assert estimate == (None if dollars is None else pytest.approx(dollars))
