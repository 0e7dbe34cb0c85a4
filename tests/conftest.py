import pytest

from mab.config import config_from_document
from mab.web import create_app

ITEMS_CSV = """item_id,successes,failures
item-1,90,10
item-2,10,90
item-3,0,0
item-4,500,500
item-5,1,1000
"""

# Per-user counts for a model whose entity ids are "{user_id}:{item_id}".
USER_ITEMS_CSV = """entity,clicks,skips
u-1:item-1,0,1000
u-1:item-2,1000,0
u-2:item-1,1000,0
"""


@pytest.fixture
def items_csv(tmp_path):
    path = tmp_path / "items.csv"
    path.write_text(ITEMS_CSV)
    return path


@pytest.fixture
def user_items_csv(tmp_path):
    path = tmp_path / "user_items.csv"
    path.write_text(USER_ITEMS_CSV)
    return path


@pytest.fixture
def make_config(tmp_path):
    """Build a validated Config from a TOML-like dict (cache in tmp_path)."""

    def make(document=None, **environ):
        environ.setdefault("MAB_CACHE_DIR", str(tmp_path / "cache"))
        return config_from_document(document or {}, environ)

    return make


@pytest.fixture
def two_model_config(make_config, items_csv, user_items_csv):
    return make_config(
        {
            "max_items": 50,
            "stores": {
                "default": {"path": str(items_csv)},
                "per_user": {"path": str(user_items_csv)},
            },
            "models": {
                "default": {},
                "optimistic": {"prior_alpha": 50.0, "prior_beta": 1.0},
                "per_user": {
                    "store": "per_user",
                    "successes": "clicks",
                    "failures": "skips",
                    "entity_id": "{user_id}:{item_id}",
                },
            },
        }
    )


@pytest.fixture
def app(two_model_config):
    app = create_app(two_model_config, load="now")
    yield app
    app.service.close()
