import numpy as np

from mab.baseline import PythonLookupStore, create_baseline_app, numpy_sample_beta
from mab.stores.embedded import Settings, Store
from tests.beta_checks import SIGNIFICANCE, ks_pvalue_beta


def test_python_lookups_agree_with_the_compiled_index(user_items_csv, tmp_path):
    settings = Settings(name="t", path=str(user_items_csv))
    compiled, python = Store(settings, cache_dir=str(tmp_path)), PythonLookupStore(settings, cache_dir=str(tmp_path))
    compiled.load()
    python.load()
    ids = ["item-1", "item-2", "item-3", "item-1"]
    for prefix in ("u-1:", "u-2:", "nobody:"):
        a = compiled.fetch(ids, prefix, "", ("clicks", "skips"))
        b = python.fetch(ids, prefix, "", ("clicks", "skips"))
        assert a.missing == b.missing
        for x, y in zip(a.columns, b.columns):
            np.testing.assert_array_equal(x, y)


def test_numpy_sampler_keeps_the_contract():
    a, b = np.full(100_000, 2.0), np.full(100_000, 5.0)
    first = numpy_sample_beta(a, b, seed=7)
    np.testing.assert_array_equal(first, numpy_sample_beta(a, b, seed=7))
    assert ks_pvalue_beta(first, 2.0, 5.0) > SIGNIFICANCE


def test_baseline_app_serves(items_csv, tmp_path, monkeypatch):
    from falcon import testing

    monkeypatch.setenv("MAB_DATA", str(items_csv))
    monkeypatch.setenv("MAB_CACHE_DIR", str(tmp_path / "cache"))
    app = create_baseline_app()
    assert app.service.wait_until_ready(10)
    body = testing.TestClient(app).simulate_post("/predict", json={"item_ids": ["item-1", "new"]}).json
    assert sorted(body["item_ids"]) == ["item-1", "new"] and body["missing"] == 1
    app.service.close()
