from __future__ import annotations

from pathlib import Path

import pytest

from atp_service.config import ConfigError, load_settings, parse_config
from atp_service.ops.views import buffers_text
from tests.conftest import config_text

GOOD = config_text()


def test_the_contract_example_config_parses_with_env_overrides() -> None:
    settings = parse_config(
        GOOD,
        {"ATP_REDIS_URL": "redis://r:1/2", "ATP_KAFKA_BOOTSTRAP": "k:9", "ATP_LEDGER_DIR": "/l"},
    )
    assert settings.redis.url == "redis://r:1/2"
    assert settings.kafka.bootstrap == "k:9"
    assert settings.ledger.dir == "/l"
    assert [c.name for c in settings.channels] == ["web", "marketplace"]
    assert settings.locations == ("DC-EAST", "DC-WEST")


@pytest.mark.parametrize(
    ("text", "named"),
    [
        pytest.param(GOOD + "\n[surprise]\nx = 1\n", "surprise", id="unknown-table"),
        pytest.param(
            GOOD.replace('group_id = "atp-test"', 'group_id = "atp-test"\ncolour = "red"'),
            "colour",
            id="unknown-key",
        ),
        pytest.param(
            GOOD.replace('locations = ["DC-EAST"]', "locations = []"),
            "locations",
            id="channel-without-locations",
        ),
        pytest.param(
            GOOD.replace('name = "marketplace"', 'name = "web"'),
            "duplicate channel name",
            id="duplicate-channel",
        ),
        pytest.param(
            GOOD.replace('scopes = ["admin"]', 'scopes = ["root"]'), "scopes", id="bad-scope"
        ),
        pytest.param(
            GOOD.replace("safety_stock = 5", "safety_stock = -1"),
            "safety_stock",
            id="negative-safety-stock",
        ),
        pytest.param(
            GOOD.replace("priority = 2", 'priority = "high"'), "priority", id="wrong-type"
        ),
        pytest.param(GOOD + "\n[[channels]\n", "TOML", id="not-toml"),
        pytest.param(GOOD.replace('sha256 = "', 'sha256 = "zz'), "sha256", id="bad-hash"),
        # The OpenAPI document states these ceilings; a deployment may only lower them.
        pytest.param(
            GOOD + "\n[api]\nmax_line_quantity = 1000001\n",
            "max_line_quantity",
            id="above-line-ceiling",
        ),
        pytest.param(
            GOOD + "\n[api]\nmax_batch_orders = 10001\n",
            "max_batch_orders",
            id="above-batch-ceiling",
        ),
        pytest.param(
            GOOD.replace("safety_stock = 5", "safety_stock = 5\nsafety_stock_percent = 101"),
            "safety_stock_percent",
            id="percent-above-100",
        ),
        pytest.param(
            GOOD.replace("safety_stock = 5", "safety_stock = 5\nmax_order_quantity = 0"),
            "max_order_quantity",
            id="zero-order-cap",
        ),
        pytest.param(
            GOOD.replace(
                "safety_stock = 5", "safety_stock = 5\nmin_available = 9\nmax_available = 4"
            ),
            "min_available (9) is above max_available (4)",
            id="min-above-max",
        ),
        pytest.param(
            GOOD + '\n[[locations]]\nname = "DC-NORTH"\ndaily_capacity_units = 5\n',
            "`locations[0]` ('DC-NORTH') is no channel's location",
            id="unknown-location",
        ),
        pytest.param(
            GOOD + '\n[[locations]]\nname = "DC-EAST"\ndaily_capacity_units = -1\n',
            "locations[0].daily_capacity_units",
            id="negative-capacity",
        ),
        pytest.param(
            GOOD + '\n[[kits]]\nsku = "K"\ncomponents = [{sku = "K", quantity = 1}]\n',
            "`kits[0]` ('K'): component 'K' is itself a kit",
            id="kit-names-itself",
        ),
        pytest.param(
            GOOD + '\n[[kits]]\nsku = "K"\ncomponents = [{sku = "A", quantity = 1001}]\n',
            "kits[0].components[0].quantity",
            id="kit-quantity-above-1000",
        ),
        pytest.param(
            GOOD + '\n[[kits]]\nsku = "K"\ncomponents = [{sku = "A", quantity = 1}]\n'
            '\n[[kits]]\nsku = "K2"\ncomponents = [{sku = "K", quantity = 1}]\n',
            "`kits[0]` ('K'): 'K' is a component of kit 'K2'",
            id="kit-of-kits",
        ),
    ],
)
def test_an_invalid_config_names_the_problem(text: str, named: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(text)
    assert named in str(raised.value)


def test_a_missing_config_file_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ATP_CONFIG"):
        load_settings({"ATP_CONFIG": str(tmp_path / "absent.toml")})


def test_config_errors_do_not_echo_secret_values() -> None:
    secret = "s3cr3t-password"
    text = GOOD.replace(
        'url = "redis://127.0.0.1:1/0"', f'url = "redis://u:{secret}@h:1/0"\npassword = "{secret}"'
    )
    with pytest.raises(ConfigError) as raised:
        parse_config(text)
    assert secret not in str(raised.value)


def test_channel_buffers_parse_and_read_as_the_control_tower_shows_them() -> None:
    text = GOOD.replace(
        "safety_stock = 5",
        "safety_stock = 5\nsafety_stock_percent = 20\nmin_available = 2\nmax_available = 40"
        "\nmax_order_quantity = 6\nlow_stock_threshold = 3",
    )
    market = parse_config(text).channel("marketplace")
    assert market is not None
    assert buffers_text(market) == "20% of on hand, min 2, max 40, order cap 6, low at 3"


def test_atp_redis_cluster_takes_only_booleans_and_sets_the_shards() -> None:
    with pytest.raises(ConfigError, match="ATP_REDIS_CLUSTER must be 1, true, 0 or false"):
        parse_config(config_text(), {"ATP_REDIS_CLUSTER": "yes"})
    on = parse_config(config_text(), {"ATP_REDIS_CLUSTER": "TRUE"}).redis
    assert (on.cluster, on.shard_count) == (True, 16)
    assert parse_config(config_text(), {"ATP_REDIS_CLUSTER": "0"}).redis.shard_count == 1


def test_capacities_and_kits_are_taken_on_a_cluster_and_with_several_shards() -> None:
    cap = '[[locations]]\nname = "DC-EAST"\ndaily_capacity_units = 5'
    kit = '[[kits]]\nsku = "K"\ncomponents = [{sku = "A", quantity = 1}]'
    on_cluster = parse_config(config_text(extra=f"{cap}\n{kit}"), {"ATP_REDIS_CLUSTER": "1"})
    assert [c.name for c in on_cluster.capacities] == ["DC-EAST"]
    assert on_cluster.redis.shard_count == 16
    assert on_cluster.kits
    sharded = parse_config(config_text(extra=cap, redis_options={"shards": 4}))
    assert [c.daily_capacity_units for c in sharded.capacities] == [5]
